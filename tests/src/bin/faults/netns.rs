//! A network namespace of the suite's own, so that traffic between Chronicle and one of
//! its dependencies can be cut without touching anything else on the machine.
//!
//! Chronicle runs inside the namespace; the broker, a forwarder to PostgreSQL and the
//! load's clients stay outside. Each of them reaches the other side over a link of its
//! own: a veth pair with a /30 of private addresses that exist only on this pair (so
//! nothing leaves the machine). Cutting a link takes its outer end down: the inner end
//! loses its carrier, and packets Chronicle sends there are dropped silently, as a
//! switch that died would drop them. Established connections hang; new ones get no
//! answer. Neighbours are entered statically, so no ARP failure turns the silence into
//! a prompt "no route to host". Healing brings the end up again and TCP resumes.
//!
//! Building a namespace needs root (CAP_NET_ADMIN); the suite says so when it can't.

use std::net::Ipv4Addr;
use std::process::Command;

/// One veth pair between the machine and the namespace.
pub struct Link {
    pub name: &'static str,
    /// The outer end's interface and address (the dependency listens here).
    outer: String,
    pub outer_addr: Ipv4Addr,
    /// The inner end's interface and address (Chronicle's side).
    inner: String,
    pub inner_addr: Ipv4Addr,
}

pub struct Namespace {
    pub name: String,
    links: Vec<Link>,
}

/// Runs `ip` with `args`; panics with what it printed when it fails.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("the `ip` command (iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {} (the partition rows need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The MAC address of an interface, in the namespace `netns` if given.
fn mac(netns: Option<&str>, interface: &str) -> String {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-br", "link", "show", "dev", interface]);
    let line = ip(&args);
    line.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC address for {interface} in {line:?}"))
        .to_owned()
}

/// Namespaces and outer interfaces of this suite left behind by an interrupted run.
fn remove_leftovers() {
    let namespaces = Command::new("ip").args(["netns", "list"]).output();
    for line in namespaces
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
    {
        if let Some(name) = line.split_whitespace().next()
            && name.starts_with("chronicle-faults")
        {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

impl Namespace {
    /// A namespace with its loopback up and one link per name, numbered 10.213.N.0/30
    /// (N from 1), the outer end .1 and the inner end .2.
    pub fn create(links: &[&'static str]) -> Self {
        remove_leftovers();
        let name = format!("chronicle-faults-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let mut namespace = Self {
            name,
            links: Vec::new(),
        };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"]);
        for (index, link) in links.iter().enumerate() {
            namespace.add_link(link, index as u8 + 1);
        }
        namespace
    }

    fn add_link(&mut self, name: &'static str, number: u8) {
        let outer = format!("cf-{name}-o");
        let inner = format!("cf-{name}-i");
        let outer_addr = Ipv4Addr::new(10, 213, number, 1);
        let inner_addr = Ipv4Addr::new(10, 213, number, 2);
        // An outer end left by an earlier run would clash.
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &self.name]);
        ip(&["addr", "add", &format!("{outer_addr}/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let ns = self.name.as_str();
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{inner_addr}/30"),
            "dev",
            &inner,
        ]);
        ip(&["-n", ns, "link", "set", &inner, "up"]);
        let link = Link {
            name,
            outer,
            outer_addr,
            inner,
            inner_addr,
        };
        self.links.push(link);
        self.enter_neighbours(name);
    }

    /// Each end knows the other's MAC address for good.
    fn enter_neighbours(&self, name: &str) {
        let link = self.link(name);
        let ns = self.name.as_str();
        let outer_mac = mac(None, &link.outer);
        let inner_mac = mac(Some(ns), &link.inner);
        ip(&[
            "neigh",
            "replace",
            &link.inner_addr.to_string(),
            "lladdr",
            &inner_mac,
            "dev",
            &link.outer,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            &link.outer_addr.to_string(),
            "lladdr",
            &outer_mac,
            "dev",
            &link.inner,
            "nud",
            "permanent",
        ]);
    }

    pub fn link(&self, name: &str) -> &Link {
        self.links
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no link {name}"))
    }

    /// The prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Cuts the link: nothing passes either way until [`Namespace::heal`].
    pub fn cut(&self, name: &str) {
        ip(&["link", "set", &self.link(name).outer, "down"]);
    }

    pub fn heal(&self, name: &str) {
        ip(&["link", "set", &self.link(name).outer, "up"]);
        // Taking the end down flushed its neighbours, permanent ones included.
        self.enter_neighbours(name);
    }
}

impl Drop for Namespace {
    /// Deleting the namespace deletes the inner ends, and with them the outer ones.
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
