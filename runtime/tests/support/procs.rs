//! Child processes of the tests (echo backends, tidegate), killed when their guard drops — also
//! on panic — with their output captured line by line.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines read from one pipe. `cap` bounds memory for chatty processes (oldest lines dropped).
#[derive(Debug, Default)]
struct LineBuf {
    lines: VecDeque<String>,
    cap: Option<usize>,
    dropped: usize,
}

/// Shared view of the captured lines of one pipe.
#[derive(Debug, Clone, Default)]
pub struct Lines(Arc<Mutex<LineBuf>>);

impl Lines {
    fn new(cap: Option<usize>) -> Self {
        Lines(Arc::new(Mutex::new(LineBuf {
            cap,
            ..LineBuf::default()
        })))
    }

    fn push(&self, line: String) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.lines.push_back(line);
        if let Some(cap) = buf.cap {
            while buf.lines.len() > cap {
                buf.lines.pop_front();
                buf.dropped += 1;
            }
        }
    }

    /// How many captured lines satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.lines.iter().filter(|l| pred(l)).count()
    }

    /// The first captured line satisfying `pred`.
    pub fn find(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.lines.iter().find(|l| pred(l)).cloned()
    }

    /// The last `n` lines, joined with `sep`.
    pub fn tail(&self, n: usize, sep: &str) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let skip = buf.lines.len().saturating_sub(n);
        buf.lines.iter().skip(skip).cloned().collect::<Vec<_>>().join(sep)
    }
}

/// A running child process; killed and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Spawns `program args...` with stdin closed and stdout/stderr captured. `stdout_cap` bounds
    /// the stdout lines kept (None = keep all, for log-reading checks); stderr keeps 400 lines.
    pub fn spawn(
        name: impl Into<String>,
        program: &Path,
        args: &[String],
        stdout_cap: Option<usize>,
    ) -> std::io::Result<Proc> {
        let name = name.into();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("TIDEGATE_LOG_FORMAT", "text")
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {name} ({}): {e}", program.display())))?;
        let stdout = Lines::new(stdout_cap);
        let stderr = Lines::new(Some(400));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(reader_thread(out, stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader_thread(err, stderr.clone()));
        }
        Ok(Proc {
            name,
            child,
            stdout,
            stderr,
            readers,
        })
    }

    /// The exit status if the process has already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (polling, up to `timeout`) for a stdout line satisfying `pred`. Fails early when
    /// the process exits.
    pub async fn wait_for_stdout(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout.find(&pred) {
                return Ok(line);
            }
            if let Some(status) = self.exited() {
                // Give the reader a moment to drain what the process wrote before exiting.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(line) = self.stdout.find(&pred) {
                    return Ok(line);
                }
                return Err(format!(
                    "{} exited ({status}); stderr: {}",
                    self.name,
                    self.output_tail(20)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not print the expected line within {timeout:?}; output: {}",
                    self.name,
                    self.output_tail(20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of stderr and stdout on one line, for failure messages.
    pub fn output_tail(&self, n: usize) -> String {
        let err = self.stderr.tail(n, " | ");
        let out = self.stdout.tail(n.min(5), " | ");
        let mut parts = Vec::new();
        if !err.is_empty() {
            parts.push(format!("[stderr] {err}"));
        }
        if !out.is_empty() {
            parts.push(format!("[stdout] {out}"));
        }
        if parts.is_empty() {
            "(no output)".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // The readers end when the pipes close; they are not joined, so a grandchild holding a
        // pipe open can never hang the test.
        self.readers.clear();
    }
}

fn reader_thread(pipe: impl Read + Send + 'static, lines: Lines) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    lines.push(String::from_utf8_lossy(&buf).into_owned());
                }
            }
        }
    })
}
