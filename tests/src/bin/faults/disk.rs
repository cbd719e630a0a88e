//! A small filesystem of the suite's own (tmpfs), mounted over a directory a program
//! writes to, and filled to the last byte on demand: the disk-full rows. Mounting needs
//! root (CAP_SYS_ADMIN); the suite says so when it can't.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    mount_point: PathBuf,
}

/// A file that takes up every free byte of a [`SmallDisk`] while it exists.
pub struct Filler {
    path: PathBuf,
    pub bytes: u64,
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {} (the disk-full rows need root)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

impl SmallDisk {
    /// Mounts a tmpfs of `megabytes` over `dir` (created if need be).
    pub fn mount(dir: &Path, megabytes: u32) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.to_string_lossy();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m"),
                "tmpfs",
                &path,
            ],
        );
        Self {
            mount_point: dir.to_owned(),
        }
    }

    /// Fills the disk: writes a file until the filesystem refuses a byte more.
    pub fn fill(&self) -> Filler {
        let path = self.mount_point.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut bytes = 0;
        for chunk in [1 << 20, 4096, 1] {
            let block = vec![0_u8; chunk];
            while file.write_all(&block).is_ok() {
                bytes += chunk as u64;
            }
        }
        Filler { path, bytes }
    }
}

impl Filler {
    /// Frees the space again.
    pub fn remove(self) {
        std::fs::remove_file(&self.path).unwrap();
    }
}

impl Drop for SmallDisk {
    /// Detaches the filesystem (lazily: a program killed a moment ago may still hold a
    /// file on it) and its contents go with it.
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .output();
    }
}
