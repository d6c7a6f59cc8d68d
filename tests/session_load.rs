//! Load: 1,000 concurrent TCP sessions, each exchanging messages, none lost. In its own test
//! binary so it does not compete with other tests for sockets and cores.

mod common;

use bytes::Bytes;
use common::*;
use qsocket::session::{Client, Server, Transport};
use std::time::Duration;
use tokio::sync::mpsc;

const SESSIONS: usize = 1000;
const MESSAGES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tcp_sessions_lose_nothing() {
    raise_fd_limit();
    let events = Events::default();
    let server = Server::builder(codec(), echo_factory(&events))
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let url = server.endpoint(Transport::Tcp).expect("tcp").to_string();

    // Connect in batches well below the listen backlog.
    let mut clients = Vec::with_capacity(SESSIONS);
    for batch in 0..SESSIONS / 200 {
        let mut pending = Vec::new();
        for i in 0..200 {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            let client = Client::builder(&url, codec(), move || Forward(tx.clone()))
                .start()
                .await
                .expect("client");
            pending.push((batch * 200 + i, client, rx));
        }
        for (id, client, rx) in pending {
            let session = within("connect", client.session()).await.expect("live");
            clients.push((id, client, session, rx));
        }
    }
    // The server accepts on its own schedule: wait until it has every session.
    eventually("the server has every session", || {
        server.session_count() == SESSIONS
    })
    .await;

    // Every session talks at once.
    let mut tasks = Vec::with_capacity(SESSIONS);
    for (id, client, session, mut rx) in clients {
        tasks.push(tokio::spawn(async move {
            for m in 0..MESSAGES {
                session
                    .send(Bytes::from(format!("{id}:{m}")))
                    .await
                    .expect("send");
            }
            for m in 0..MESSAGES {
                let got = tokio::time::timeout(WAIT, rx.recv())
                    .await
                    .expect("echo in time")
                    .expect("echo");
                assert_eq!(got, Bytes::from(format!("{id}:{m}")));
            }
            client
        }));
    }
    let mut done = Vec::with_capacity(SESSIONS);
    for t in tasks {
        done.push(within("session task", t).await.expect("task"));
    }
    let echoed = events.count(|e| matches!(e, Ev::Msg(..)));
    assert_eq!(
        echoed,
        SESSIONS * MESSAGES,
        "every message reached the server once"
    );
    for c in &done {
        c.close(Duration::from_secs(10)).await;
    }
    events
        .wait_until("every session closed once", |e| {
            e.iter().filter(|e| matches!(e, Ev::Close(_))).count() == SESSIONS
        })
        .await;
    server.shutdown(Duration::from_secs(10)).await;
}
