//! `costs`: per-call costs that do not drift with a noisy machine, for the client process and
//! the server process separately: system calls (`strace -c -f`, every thread) and user-space
//! instructions (the total `Ir` of `valgrind --tool=callgrind`, every thread).
//!
//! The set-up is `compare`'s: the server (`serve IMP`) pinned to CPU 0, the client (`load`)
//! pinned to CPU 1, one-thread runtimes, ONE connection, N callers looping on a 64-byte unary
//! echo; each of the two processes runs under the tool. Instead of running for a time, the
//! client makes a fixed number of calls (`load IMP ADDR N SECS --calls C`: the N callers share
//! C calls, SECS is only a time limit) and exits; then the server's stdin is closed and it exits
//! too, which makes strace print its summary and callgrind write its profile. Each tool runs
//! twice, with C1 and C1 + D calls, and the figure is (count(C1 + D) − count(C1)) / D: start-up,
//! connection set-up and shut-down cancel out.
//!
//! Counts: under strace C1 = 20,000 and D = 100,000; under callgrind C1 = 4,000 and D = 20,000.
//! At N = 1 both tools run about 6,000–10,000 calls/s (callgrind emulates every instruction,
//! strace stops at every syscall), far more at N = 32, so one implementation takes some 20 s
//! at N = 1 and 5 s at N = 32, and the default run (3 implementations × N = 1, 32) about
//! 1.5 minutes on 2 cores. Two default runs agreed to 1.5 % on instructions per call and to
//! 0.01 on syscalls per call; syscalls at N > 1 depend on how many calls a read or write
//! carries, the one figure here that timing can move.
//!
//! Caveats: both tools slow the processes down, so at N > 1 the batches (calls per read or
//! write) are not those of an unwrapped run; the figures compare implementations under the
//! same conditions. `Ir` counts user-space instructions only: the kernel's work for a syscall
//! is in the syscall columns, not in the instructions.

use crate::compare::{field, spawn_self, wait_bounded, Imp, ServerProc};
use crate::Error;
use qsocket::rpc::Codec;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The implementations `costs` measures unless `--impls` says otherwise.
pub const DEFAULT_IMPS: [Imp; 3] = [
    Imp::Baseline,
    Imp::Qsocket("tcp", Codec::Protobuf),
    Imp::Qsocket("tcp", Codec::Json),
];

/// Time limit of one client run (its `SECS`), far above what the counts need.
const CLIENT_SECS: u64 = 300;
/// How long a client may take to exit after closing its stdout.
const CLIENT_EXIT: Duration = Duration::from_secs(60);
/// Syscalls with a column of their own: the most frequent ones over the whole table.
const TOP: usize = 3;

/// Counts read from a tool's output: calls per syscall name plus `total` (strace), or `Ir`
/// (callgrind).
type Counts = BTreeMap<String, u64>;
/// The same per call.
type PerCall = BTreeMap<String, f64>;

/// A tool wrapping both processes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tool {
    Strace,
    Callgrind,
}

impl Tool {
    const ALL: [Tool; 2] = [Tool::Strace, Tool::Callgrind];

    /// The program; where it is missing the measurement is skipped.
    fn program(self) -> &'static str {
        match self {
            Tool::Strace => "strace",
            Tool::Callgrind => "valgrind",
        }
    }

    /// `(C1, D)`: calls of the shorter run, and how many more the longer run makes.
    fn counts(self) -> (u64, u64) {
        match self {
            Tool::Strace => (20_000, 100_000),
            Tool::Callgrind => (4_000, 20_000),
        }
    }

    fn available(self) -> bool {
        Command::new(self.program())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The command that runs a program under the tool, writing its counts to `out`.
    fn wrap(self, out: &Path) -> Vec<String> {
        let out = out.display();
        match self {
            Tool::Strace => vec![
                "strace".into(),
                "-q".into(),
                "-c".into(),
                "-f".into(),
                "-o".into(),
                out.to_string(),
            ],
            Tool::Callgrind => vec![
                "valgrind".into(),
                "-q".into(),
                "--tool=callgrind".into(),
                format!("--callgrind-out-file={out}"),
            ],
        }
    }

    /// Reads the counts the tool wrote to `out`.
    fn read(self, out: &Path) -> Result<Counts, Error> {
        let text = std::fs::read_to_string(out)
            .map_err(|e| format!("{}: no output in {}: {e}", self.program(), out.display()))?;
        let counts = match self {
            Tool::Strace => Some(parse_strace(&text)).filter(|c| c.contains_key("total")),
            Tool::Callgrind => parse_callgrind(&text).map(|ir| Counts::from([("Ir".into(), ir)])),
        };
        counts.ok_or_else(|| format!("no summary in {}", out.display()).into())
    }
}

/// `strace -c` summary: `% time  seconds  usecs/call  calls  [errors]  syscall` rows and a
/// `total` row; the header and the separators do not parse and are skipped.
fn parse_strace(text: &str) -> Counts {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let calls = f.get(3)?.parse().ok()?;
            Some((f.last()?.to_string(), calls))
        })
        .collect()
}

/// The total `Ir` of a callgrind profile: its `summary:` line, else its `totals:` line.
fn parse_callgrind(text: &str) -> Option<u64> {
    let line = ["summary:", "totals:"]
        .iter()
        .find_map(|key| text.lines().find_map(|l| l.strip_prefix(key)))?;
    line.split_whitespace().next()?.parse().ok()
}

/// One run: `imp` with `n` callers making `calls` calls, both processes under `tool`.
/// Returns the `(client, server)` counts.
fn run(tool: Tool, imp: Imp, n: usize, calls: u64, dir: &Path) -> Result<(Counts, Counts), Error> {
    let what = format!(
        "{} x{n}, {calls} calls under {}",
        imp.name(),
        tool.program()
    );
    let file = |side: &str| {
        dir.join(format!(
            "{}-{}-{n}-{calls}-{side}",
            tool.program(),
            imp.name()
        ))
    };
    let (client_out, server_out) = (file("client"), file("server"));
    let server = ServerProc::start(imp, Some(0), &tool.wrap(&server_out))?;
    let args = [
        "load".to_string(),
        imp.name().into(),
        server.addr.clone(),
        n.to_string(),
        CLIENT_SECS.to_string(),
        "--calls".into(),
        calls.to_string(),
    ];
    let mut client = spawn_self(Some(1), &tool.wrap(&client_out), &args)?;
    let mut out = String::new();
    client
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut out)?;
    let client_status = wait_bounded(&mut client, CLIENT_EXIT)?;
    let server_status = server.stop()?;
    let result = out
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .ok_or_else(|| format!("{what}: the load process failed ({client_status})"))?;
    let (done, errors) = (field(result, "calls"), field(result, "errors"));
    if done != calls || errors != 0 {
        return Err(format!("{what}: {done} calls succeeded, {errors} failed").into());
    }
    if !client_status.success() || !server_status.success() {
        return Err(format!("{what}: client {client_status}, server {server_status}").into());
    }
    Ok((tool.read(&client_out)?, tool.read(&server_out)?))
}

/// `(after − before) / calls` for every key of either.
fn per_call(before: &Counts, after: &Counts, calls: u64) -> PerCall {
    let get = |c: &Counts, k: &str| c.get(k).copied().unwrap_or(0) as f64;
    before
        .keys()
        .chain(after.keys())
        .map(|k| (k.clone(), (get(after, k) - get(before, k)) / calls as f64))
        .collect()
}

/// Per-call `(client, server)` counts of `tool` for `imp` at `n`, from two runs.
fn measure(tool: Tool, imp: Imp, n: usize, dir: &Path) -> Result<(PerCall, PerCall), Error> {
    let (c1, d) = tool.counts();
    let (client1, server1) = run(tool, imp, n, c1, dir)?;
    let (client2, server2) = run(tool, imp, n, c1 + d, dir)?;
    Ok((
        per_call(&client1, &client2, d),
        per_call(&server1, &server2, d),
    ))
}

/// `name value, …` of the per-call counts that are not ~0, largest first.
fn breakdown(p: &PerCall) -> String {
    let mut v: Vec<(&String, &f64)> = p.iter().filter(|(_, x)| x.abs() >= 0.0005).collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    let items: Vec<String> = v.iter().map(|(k, x)| format!("{k} {x:.3}")).collect();
    items.join(", ")
}

/// What one implementation at one N costs per call; `None` where the tool is missing.
struct Row {
    imp: Imp,
    n: usize,
    /// `(client, server)` syscalls per call by name, with `total`.
    syscalls: Option<(PerCall, PerCall)>,
    /// `(client, server)` instructions per call.
    instructions: Option<(f64, f64)>,
}

fn measure_all(tools: &[Tool], imps: &[Imp], ns: &[usize], dir: &Path) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    for &n in ns {
        for &imp in imps {
            let mut row = Row {
                imp,
                n,
                syscalls: None,
                instructions: None,
            };
            for &tool in tools {
                let (c1, d) = tool.counts();
                eprintln!(
                    "costs: {} x{n} under {}: {c1} and {} calls ...",
                    imp.name(),
                    tool.program(),
                    c1 + d
                );
                let t0 = Instant::now();
                let (client, server) = measure(tool, imp, n, dir)?;
                let secs = t0.elapsed().as_secs_f64();
                match tool {
                    Tool::Strace => {
                        eprintln!("  syscalls/call client: {}", breakdown(&client));
                        eprintln!(
                            "  syscalls/call server: {}  ({secs:.0} s)",
                            breakdown(&server)
                        );
                        row.syscalls = Some((client, server));
                    }
                    Tool::Callgrind => {
                        let ir = |p: &PerCall| p.get("Ir").copied().unwrap_or(f64::NAN);
                        let (c, s) = (ir(&client), ir(&server));
                        eprintln!(
                            "  instructions/call client {c:.0}, server {s:.0}  ({secs:.0} s)"
                        );
                        row.instructions = Some((c, s));
                    }
                }
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Measures `imps` at every N of `ns` and returns the Markdown report.
pub fn cmd_costs(imps: &[Imp], ns: &[usize]) -> Result<String, Error> {
    let mut notes = Vec::new();
    let tools: Vec<Tool> = Tool::ALL
        .into_iter()
        .filter(|t| {
            let ok = t.available();
            if !ok {
                let note = format!(
                    "`{}` was not found: its measurement is skipped (–).",
                    t.program()
                );
                eprintln!("costs: {note}");
                notes.push(note);
            }
            ok
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("qsocket-bench-costs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rows = measure_all(&tools, imps, ns, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = table(&rows?);
    for note in notes {
        out.push_str(&format!("\n{note}\n"));
    }
    Ok(out)
}

/// `a / b` with `prec` decimals (no `-0.000` for a tiny negative difference), `–` for none.
fn pair(v: Option<(f64, f64)>, prec: usize) -> String {
    let half_unit = 0.5 / 10f64.powi(prec as i32);
    let show = |x: f64| if x.abs() < half_unit { 0.0 } else { x };
    v.map_or_else(
        || "–".into(),
        |(a, b)| format!("{:.prec$} / {:.prec$}", show(a), show(b)),
    )
}

fn table(rows: &[Row]) -> String {
    // The most frequent syscalls over the table, client and server together.
    let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
    for (c, s) in rows.iter().filter_map(|r| r.syscalls.as_ref()) {
        for (k, v) in c.iter().chain(s) {
            if k != "total" {
                *sums.entry(k).or_default() += v;
            }
        }
    }
    let mut top: Vec<(&str, f64)> = sums.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<&str> = top.into_iter().take(TOP).map(|(k, _)| k).collect();

    let mut out = String::from("\n| implementation | N | syscalls/call client / server |");
    for k in &top {
        out.push_str(&format!(" {k} |"));
    }
    out.push_str(
        " other syscalls | instructions/call client / server | instructions × baseline |\n| --- | ---: | ---: |",
    );
    out.push_str(&" ---: |".repeat(top.len() + 3));
    out.push('\n');
    for r in rows {
        let sys = |f: &dyn Fn(&PerCall) -> f64| r.syscalls.as_ref().map(|(c, s)| (f(c), f(s)));
        let get = |p: &PerCall, k: &str| p.get(k).copied().unwrap_or(0.0);
        let base = rows
            .iter()
            .find(|b| b.n == r.n && b.imp == Imp::Baseline)
            .and_then(|b| b.instructions);
        let ratio = r
            .instructions
            .zip(base)
            .map(|((c, s), (bc, bs))| (c / bc, s / bs));
        out.push_str(&format!(
            "| {} | {} | {} |",
            r.imp.name(),
            r.n,
            pair(sys(&|p| get(p, "total")), 3)
        ));
        for k in &top {
            out.push_str(&format!(" {} |", pair(sys(&|p| get(p, k)), 3)));
        }
        let other = |p: &PerCall| get(p, "total") - top.iter().map(|k| get(p, k)).sum::<f64>();
        out.push_str(&format!(
            " {} | {} | {} |\n",
            pair(sys(&other), 3),
            pair(r.instructions, 0),
            pair(ratio, 2)
        ));
    }
    let ((s1, sd), (c1, cd)) = (Tool::Strace.counts(), Tool::Callgrind.counts());
    out.push_str(&format!(
        "\nPer call, client process / server process: (count after C1 + D calls − count after C1 \
         calls) / D, so start-up and connection set-up cancel out. Syscalls: `strace -c -f` \
         (C1 = {s1}, D = {sd}); instructions: user-space `Ir` of `valgrind --tool=callgrind` \
         (C1 = {c1}, D = {cd}). One connection, N callers, 64-byte unary echo, server on CPU 0, \
         client on CPU 1; both tools slow the processes, so at N > 1 the batching is not that of \
         `compare`.\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ------------------
 53.47    1.229072      153634         8           read
  2.34    0.053761           1     39627         1 recvfrom
------ ----------- ----------- --------- --------- ------------------
100.00    1.282833          16     39635         1 total
";
        let c = parse_strace(text);
        assert_eq!(c.get("read"), Some(&8));
        assert_eq!(c.get("recvfrom"), Some(&39627));
        assert_eq!(c.get("total"), Some(&39635));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn callgrind_summary() {
        let text = "events: Ir\nfn=main\n1 5\nsummary: 338427341\ntotals: 338427341\n";
        assert_eq!(parse_callgrind(text), Some(338_427_341));
        assert_eq!(parse_callgrind("totals: 12\n"), Some(12));
        assert_eq!(parse_callgrind("events: Ir\n"), None);
    }

    #[test]
    fn differences_per_call() {
        let a = Counts::from([("total".into(), 100), ("read".into(), 10)]);
        let b = Counts::from([("total".into(), 300), ("futex".into(), 4)]);
        let p = per_call(&a, &b, 100);
        assert_eq!(p.get("total"), Some(&2.0));
        assert_eq!(p.get("read"), Some(&-0.1));
        assert_eq!(p.get("futex"), Some(&0.04));
    }

    #[test]
    fn pairs() {
        assert_eq!(pair(Some((0.1234, -0.00001)), 3), "0.123 / 0.000");
        assert_eq!(pair(Some((4818.4, 3292.0)), 0), "4818 / 3292");
        assert_eq!(pair(None, 3), "–");
    }
}
