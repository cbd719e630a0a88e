//! Who issues a command, and what they may touch.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A role granted to a principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Acts on its own accounts, bookings and payments.
    Client,
    /// Reads event histories.
    Auditor,
    /// Reads temporal and aggregate analytics.
    Analyst,
    /// Acts on anything.
    Admin,
    /// Answers data subjects' requests: access to and erasure of their personal data.
    Privacy,
    /// Chronicle's own background processes (the process manager, the scheduler).
    System,
}

impl Role {
    /// Parses a role name as it appears in a token.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "client" => Some(Self::Client),
            "auditor" => Some(Self::Auditor),
            "analyst" => Some(Self::Analyst),
            "admin" => Some(Self::Admin),
            "privacy" => Some(Self::Privacy),
            "system" => Some(Self::System),
            _ => None,
        }
    }

    /// The name used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Auditor => "auditor",
            Self::Analyst => "analyst",
            Self::Admin => "admin",
            Self::Privacy => "privacy",
            Self::System => "system",
        }
    }
}

/// The principal behind a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub subject: String,
    pub roles: BTreeSet<Role>,
}

impl Actor {
    /// A principal with the given roles.
    pub fn new(subject: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Self {
        Self {
            subject: subject.into(),
            roles: roles.into_iter().collect(),
        }
    }

    /// Chronicle's own processes.
    pub fn system(process: &str) -> Self {
        Self::new(format!("system:{process}"), [Role::System])
    }

    /// Whether the actor holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the actor may act on something owned by `owner`: its owner, an admin, or
    /// Chronicle itself.
    pub fn may_act_for(&self, owner: &str) -> bool {
        self.subject == owner || self.has(Role::Admin) || self.has(Role::System)
    }
}
