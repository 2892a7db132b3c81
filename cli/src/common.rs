//! Helpers the client subcommands share: the `--bootstrap-server` flag, value parsers for acks
//! and `key=value` pairs, progress bars that stay quiet off a terminal, peak-RSS readings and a
//! base64 encoder for showing binary keys and values.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use spate_client::metadata::parse_bootstrap_servers;

/// The flag every client subcommand takes, as the Kafka scripts do.
#[derive(clap::Args, Debug, Clone)]
pub struct BootstrapArgs {
    /// Comma-separated `host:port` list of brokers to bootstrap from (`bootstrap.servers`).
    #[arg(long = "bootstrap-server", value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub bootstrap_server: String,
}

impl BootstrapArgs {
    pub fn servers(&self) -> Result<Vec<String>> {
        let servers = parse_bootstrap_servers(&self.bootstrap_server);
        if servers.is_empty() {
            bail!("--bootstrap-server is empty");
        }
        Ok(servers)
    }

    /// An admin client of these brokers, named `client_id` in their logs.
    pub async fn admin(&self, client_id: &str) -> Result<spate_client::Admin> {
        spate_client::Admin::new(spate_client::admin::AdminConfig {
            bootstrap_servers: self.servers()?,
            client_id: client_id.into(),
            ..spate_client::admin::AdminConfig::default()
        })
        .await
        .context("connecting to the cluster")
    }
}

/// Writes a report to stdout, ignoring a closed pipe (`spate bench ... | head -1`) instead of
/// panicking as `print!` does.
pub fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `acks` as the Kafka tools spell it: `0`, `1`, `all` or `-1`.
pub fn parse_acks(raw: &str) -> Result<i16, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        other => Err(format!("acks must be 0, 1 or all, not '{other}'")),
    }
}

/// Splits `key=value` (the value may itself contain `=`).
pub fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{raw}'")),
    }
}

/// A progress bar on stderr, or a hidden one when stderr is not a terminal (so scripts and
/// pipes get clean output).
pub fn progress_bar(total: Option<u64>, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(len) => ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Peak resident set size in bytes of a process (`VmHWM` in `/proc/<pid>/status`), `pid` None
/// for this process.
pub fn peak_rss_bytes(pid: Option<u32>) -> Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_hwm(&status).with_context(|| format!("no VmHWM line in {path}"))
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = match parts.next().unwrap_or("kB") {
        "kB" | "KB" | "kb" => 1024,
        "mB" | "MB" => 1024 * 1024,
        _ => 1,
    };
    Some(value * unit)
}

const BASE64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[*s as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Bytes per second as Kafka's perf tools report it (MB = 1024 * 1024 bytes).
pub fn mb_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1024.0 * 1024.0) / secs
}

pub fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    count as f64 / secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_accept_kafka_spellings() {
        assert_eq!(parse_acks("all"), Ok(-1));
        assert_eq!(parse_acks("-1"), Ok(-1));
        assert_eq!(parse_acks("1"), Ok(1));
        assert_eq!(parse_acks("0"), Ok(0));
        assert!(parse_acks("2").is_err());
    }

    #[test]
    fn key_values_split_on_the_first_equals() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected, "{input}");
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tspate\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert!(peak_rss_bytes(None).unwrap() > 0);
    }

    #[test]
    fn rates_handle_zero_elapsed() {
        assert_eq!(per_sec(10, Duration::ZERO), 0.0);
        assert_eq!(per_sec(10, Duration::from_secs(2)), 5.0);
        assert_eq!(mb_per_sec(2 * 1024 * 1024, Duration::from_secs(2)), 1.0);
    }
}
