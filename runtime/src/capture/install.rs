//! Applying and removing the capture on the node with the `nft` and `ip` binaries: tidegate's
//! table, its fwmark rule and its local route. Installing first removes whatever an earlier run
//! of tidegate left (a crash, SIGKILL), so it is idempotent; [`Capture`] removes everything on
//! [`Capture::remove`] or when dropped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rules::{self, CapturePlan, MARK, ROUTE_TABLE, TABLE};

/// CAP_NET_ADMIN: changing nftables and routing, and IP_TRANSPARENT sockets.
const CAP_NET_ADMIN: u32 = 12;
/// Where the binaries live when PATH lacks the sbin directories (a non-login root shell).
const SBIN_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "--capture needs the `{binary}` program, which is not in PATH, /usr/sbin or /sbin; install {package} (Debian/Ubuntu: apt-get install {package})"
    )]
    MissingBinary {
        binary: &'static str,
        package: &'static str,
    },
    #[error(
        "--capture changes the node's nftables and routing and needs CAP_NET_ADMIN, which this process lacks; run tidegate as root (or grant it CAP_NET_ADMIN)"
    )]
    NotPermitted,
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// The installed capture. Removed by [`Capture::remove`], or when dropped.
#[derive(Debug)]
pub struct Capture {
    tools: Tools,
    installed: bool,
}

/// Paths of the `nft` and `ip` binaries.
#[derive(Debug, Clone)]
struct Tools {
    nft: PathBuf,
    ip: PathBuf,
}

impl Capture {
    /// Checks that the capture can be installed (the `nft` and `ip` binaries, CAP_NET_ADMIN),
    /// without changing anything. Run it before binding sockets, so the error is the clear one.
    pub fn preflight() -> Result<(), CaptureError> {
        Tools::find()?;
        if !has_net_admin() {
            return Err(CaptureError::NotPermitted);
        }
        Ok(())
    }

    /// Removes what an earlier run left, then installs the table, the fwmark rule and the route.
    pub fn install(plan: &CapturePlan) -> Result<Self, CaptureError> {
        Self::preflight()?;
        let tools = Tools::find()?;
        let stale = tools.remove_all()?;
        if stale {
            tracing::warn!(table = TABLE, "removed the capture an earlier tidegate run left behind");
        }
        let capture = Self { tools, installed: true };
        // On any failure below, dropping `capture` removes what was already installed.
        capture.tools.ip(&[
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &ROUTE_TABLE.to_string(),
        ])?;
        capture.tools.ip(&[
            "rule",
            "add",
            "fwmark",
            &format!("{MARK:#x}"),
            "lookup",
            &ROUTE_TABLE.to_string(),
        ])?;
        capture.tools.nft(&plan.ruleset())?;
        let cidrs = plan
            .pod_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        tracing::info!(
            table = TABLE,
            fwmark = format!("{MARK:#x}"),
            route_table = ROUTE_TABLE,
            port = plan.port,
            inbound_port = plan.inbound_port,
            pod_cidrs = cidrs,
            "capture installed: TCP from the pod networks and to Services goes to the transparent listener"
        );
        Ok(capture)
    }

    /// Replaces the contents of the capture's sets (the IPv4 Service frontends and node ports of
    /// a new configuration version), atomically.
    pub fn update_sets(
        &self,
        services: &[(rules::Transport, std::net::SocketAddrV4)],
        node_ports: &[(rules::Transport, u16)],
    ) -> Result<(), CaptureError> {
        self.tools.nft(&rules::sets_ruleset(services, node_ports))
    }

    /// Removes the table, the rule and the route. Idempotent.
    pub fn remove(&mut self) -> Result<(), CaptureError> {
        if !self.installed {
            return Ok(());
        }
        self.installed = false;
        self.tools.remove_all()?;
        tracing::info!(table = TABLE, "capture removed");
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::error!(error = %e, "cannot remove the capture; remove it by hand: nft delete table {TABLE}; ip rule del fwmark {MARK:#x} lookup {ROUTE_TABLE}; ip route flush table {ROUTE_TABLE}");
        }
    }
}

impl Tools {
    fn find() -> Result<Self, CaptureError> {
        Ok(Self {
            nft: find_binary("nft").ok_or(CaptureError::MissingBinary {
                binary: "nft",
                package: "nftables",
            })?,
            ip: find_binary("ip").ok_or(CaptureError::MissingBinary {
                binary: "ip",
                package: "iproute2",
            })?,
        })
    }

    /// Removes tidegate's table, every copy of its rule and its route; says whether anything
    /// was there. Touches nothing else.
    fn remove_all(&self) -> Result<bool, CaptureError> {
        let table_existed = run(Command::new(&self.nft).args(["list", "table", "ip", "tidegate"]), None).is_ok();
        self.nft(&rules::removal_ruleset())?;
        let mut found = table_existed;
        // A run killed between two installs may have left the rule more than once.
        for _ in 0..64 {
            let deleted = self
                .ip(&[
                    "rule",
                    "del",
                    "fwmark",
                    &format!("{MARK:#x}"),
                    "lookup",
                    &ROUTE_TABLE.to_string(),
                ])
                .is_ok();
            if !deleted {
                break;
            }
            found = true;
        }
        if self
            .ip(&[
                "route",
                "del",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                &ROUTE_TABLE.to_string(),
            ])
            .is_ok()
        {
            found = true;
        }
        Ok(found)
    }

    fn nft(&self, ruleset: &str) -> Result<(), CaptureError> {
        run(Command::new(&self.nft).args(["-f", "-"]), Some(ruleset)).map(drop)
    }

    fn ip(&self, args: &[&str]) -> Result<(), CaptureError> {
        run(Command::new(&self.ip).arg("-4").args(args), None).map(drop)
    }
}

/// Runs a command to completion, feeding `stdin`; a non-zero exit is an error with its stderr.
fn run(command: &mut Command, stdin: Option<&str>) -> Result<String, CaptureError> {
    let shown = format!(
        "{} {}",
        Path::new(command.get_program()).display(),
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let spawn_error = |source| CaptureError::Spawn {
        command: shown.clone(),
        source,
    };
    let mut child = command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(CaptureError::Command {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// `name` in PATH, or in the usual sbin directories.
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether the effective capabilities include CAP_NET_ADMIN (from /proc/self/status).
fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // No procfs: let the commands themselves say what is wrong.
        return true;
    };
    cap_eff_has(&status, CAP_NET_ADMIN)
}

fn cap_eff_has(status: &str, capability: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << capability) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_net_admin_from_proc_status() {
        assert!(cap_eff_has("Name:\tx\nCapEff:\t000001ffffffffff\n", CAP_NET_ADMIN));
        assert!(!cap_eff_has("CapEff:\t0000000000000000\n", CAP_NET_ADMIN));
        assert!(cap_eff_has("CapEff:\t0000000000001000\n", CAP_NET_ADMIN));
        assert!(!cap_eff_has("Name:\tx\n", CAP_NET_ADMIN));
    }

    #[test]
    fn errors_say_what_is_missing_and_how_to_fix_it() {
        let missing = CaptureError::MissingBinary {
            binary: "nft",
            package: "nftables",
        }
        .to_string();
        assert!(
            missing.contains("`nft`") && missing.contains("apt-get install nftables"),
            "{missing}"
        );
        let denied = CaptureError::NotPermitted.to_string();
        assert!(denied.contains("CAP_NET_ADMIN") && denied.contains("root"), "{denied}");
    }

    #[test]
    fn a_failed_command_reports_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo nope >&2; exit 3"]), None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sh -c") && text.contains("nope") && text.contains("3"),
            "{text}"
        );
        assert_eq!(run(&mut Command::new("cat"), Some("ruleset")).unwrap(), "ruleset");
    }
}
