//! Helpers shared by the integration tests: recording listeners, waiting for conditions,
//! self-signed certificates.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use qsocket::session::{Ctx, EventListener, Session};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::codec::LengthDelimitedCodec;

/// Generous bound for waiting on a condition on 2 busy CI cores.
pub const WAIT: Duration = Duration::from_secs(20);

/// One recorded listener event (with the session id).
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    Open(u64),
    Msg(u64, Bytes),
    Cron(u64),
    Error(u64, String),
    Close(u64),
}

/// A shared, awaitable log of listener events.
#[derive(Clone, Default)]
pub struct Events {
    log: Arc<Mutex<Vec<Ev>>>,
    changed: Arc<Notify>,
}

impl Events {
    pub fn push(&self, ev: Ev) {
        self.log.lock().expect("events lock").push(ev);
        self.changed.notify_waiters();
    }

    pub fn snapshot(&self) -> Vec<Ev> {
        self.log.lock().expect("events lock").clone()
    }

    pub fn count(&self, f: impl Fn(&Ev) -> bool) -> usize {
        self.snapshot().iter().filter(|e| f(e)).count()
    }

    /// Waits (up to [`WAIT`]) until `pred` holds for the log; panics with the log if it never does.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&[Ev]) -> bool) {
        let done = tokio::time::timeout(WAIT, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if pred(&self.snapshot()) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            done.is_ok(),
            "timed out waiting for {what}; events: {:?}",
            self.snapshot()
        );
    }
}

/// A listener that records every event and, if `echo`, sends every message back.
pub struct Recorder {
    pub events: Events,
    pub echo: bool,
}

impl EventListener for Recorder {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_open(&mut self, session: &Session<Bytes>) -> Result<(), qsocket::Error> {
        self.events.push(Ev::Open(session.id()));
        Ok(())
    }

    async fn on_message(&mut self, ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        let msg = msg.freeze();
        self.events.push(Ev::Msg(ctx.session().id(), msg.clone()));
        if self.echo {
            ctx.send(msg);
        }
    }

    async fn on_cron(&mut self, ctx: &mut Ctx<'_, Bytes>) {
        self.events.push(Ev::Cron(ctx.session().id()));
    }

    async fn on_error(&mut self, session: &Session<Bytes>, err: &qsocket::Error) {
        self.events.push(Ev::Error(session.id(), err.to_string()));
    }

    async fn on_close(&mut self, session: &Session<Bytes>) {
        self.events.push(Ev::Close(session.id()));
    }
}

/// A factory of echoing recorders sharing one log.
pub fn echo_factory(events: &Events) -> impl Fn() -> Recorder + Send + Sync + 'static {
    let events = events.clone();
    move || Recorder {
        events: events.clone(),
        echo: true,
    }
}

/// A client-side listener forwarding every message into a channel.
pub struct Forward(pub mpsc::UnboundedSender<Bytes>);

impl EventListener for Forward {
    type In = BytesMut;
    type Out = Bytes;

    async fn on_message(&mut self, _ctx: &mut Ctx<'_, Bytes>, msg: BytesMut) {
        let _ = self.0.send(msg.freeze());
    }
}

pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(1024 * 1024)
        .new_codec()
}

/// Runs `fut` with the [`WAIT`] bound, panicking with `what` if it takes longer.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Waits (polling every few milliseconds, up to [`WAIT`]) until `cond` holds; panics naming
/// `what` if it never does.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Reads until EOF or reset (up to [`WAIT`]); true once the peer has closed the connection.
pub async fn closed_by_peer(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    within("peer closes", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("generate certificate");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// Raises this process's open-file limit to its hard limit (for tests with many sockets).
#[allow(unsafe_code)]
pub fn raise_fd_limit() {
    // SAFETY: plain libc calls with a properly initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Runs `python3 script args…` (within [`WAIT`]) and asserts that it exits with success and
/// prints `ok_line`; `what` names the client in a failure, with a hint if one helps.
pub async fn python_client(what: &str, script: &str, args: &[&str], ok_line: &str) {
    let out = within(
        what,
        tokio::process::Command::new("python3")
            .arg(script)
            .args(args)
            .output(),
    )
    .await
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(ok_line), "{stdout}");
}
