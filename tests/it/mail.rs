//! The outbox against a real SMTP conversation over TCP: retries through an
//! outage, and exactly one delivery per message with several workers.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use weightgate::app::{App, Schema};

use crate::helpers::*;

/// A minimal SMTP server that accepts every message and keeps its text.
struct SmtpServer {
    messages: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpServer {
    async fn start(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let store = messages.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(converse(stream, store.clone()));
            }
        });
        Self { messages, task }
    }

    fn received(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn converse(stream: TcpStream, store: Arc<Mutex<Vec<String>>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 smtp.test ESMTP\r\n").await;
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 smtp.test\r\n",
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
            "DATA" => {
                let _ = write.write_all(b"354 go ahead\r\n").await;
                let mut message = String::new();
                while let Ok(Some(l)) = lines.next_line().await {
                    if l == "." {
                        break;
                    }
                    message.push_str(&l);
                    message.push('\n');
                }
                store.lock().unwrap().push(message);
                b"250 queued\r\n"
            }
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"500 unknown command\r\n",
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// A local address with nothing listening on it (yet).
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn unsent(t: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap()
}

both!(mail_queued_during_an_smtp_outage_is_sent_once_the_server_returns);
async fn mail_queued_during_an_smtp_outage_is_sent_once_the_server_returns() {
    let smtp = closed_port().await;
    let t = TestApp::spawn_with(|c| c.smtp_url = Some(format!("smtp://{smtp}"))).await;
    let researcher = client();
    let (status, _) = t
        .apply(
            &researcher,
            &[
                ("name", "Katherine Johnson"),
                ("email", "kj@nasa.example.gov"),
                ("affiliation", "NASA"),
                ("intended_use", "Trajectories"),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(status, 200, "the applicant is not bothered by the outage");

    let mut failed = false;
    for _ in 0..100 {
        let attempts: Option<i64> =
            sqlx::query_scalar("SELECT MAX(attempts) FROM outbox WHERE sent_at IS NULL")
                .fetch_one(t.app.db.pool())
                .await
                .unwrap();
        if attempts.unwrap_or(0) >= 1 {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed, "the first attempt failed against a closed port");
    assert_eq!(unsent(&t).await, 1, "the message is kept, not dropped");
    let error: Option<String> = sqlx::query_scalar("SELECT last_error FROM outbox")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert!(error.is_some());

    let server = SmtpServer::start(smtp).await;
    for _ in 0..300 {
        if !server.received().is_empty() && unsent(&t).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = server.received();
    assert_eq!(received.len(), 1, "sent exactly once after the retry");
    assert!(received[0].contains("To: kj@nasa.example.gov"));
    assert!(received[0].contains("/confirm/"));
    assert_eq!(unsent(&t).await, 0);
}

both!(several_outbox_workers_send_each_message_exactly_once);
async fn several_outbox_workers_send_each_message_exactly_once() {
    let smtp = closed_port().await;
    let server = SmtpServer::start(smtp).await;
    let t = TestApp::spawn_with(|c| c.smtp_url = Some(format!("smtp://{smtp}"))).await;
    let replicas = [
        t.app.clone(),
        App::open(t.app.config.clone(), Schema::Check).await.unwrap(),
        App::open(t.app.config.clone(), Schema::Check).await.unwrap(),
    ];
    let count = 30;
    for i in 0..count {
        let mut tx = t.app.db.begin().await.unwrap();
        weightgate::mail::enqueue(
            &mut tx,
            &format!("r{i}@example.org"),
            &format!("message {i}"),
            "hello",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    // The spawned portal runs one worker; two more replicas run theirs.
    let workers: Vec<_> = replicas[1..]
        .iter()
        .map(|app| app.mail.run_worker(app.db.clone()).unwrap())
        .collect();
    for app in &replicas {
        app.mail.wake();
    }
    for _ in 0..300 {
        if server.received().len() >= count && unsent(&t).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = server.received();
    let mut subjects: Vec<String> = received
        .iter()
        .map(|m| m.lines().find(|l| l.starts_with("Subject: ")).unwrap().to_owned())
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), count, "every message arrived");
    assert_eq!(received.len(), count, "none arrived twice");
    for worker in workers {
        worker.abort();
    }
}

/// The raw text of the e-mail to `to` whose text holds `marker`, as written
/// to the outbox folder (no decoding).
async fn raw_mail(t: &TestApp, to: &str, marker: &str) -> String {
    t.wait_for_mail(to, marker).await;
    std::fs::read_dir(t.outbox())
        .unwrap()
        .flatten()
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap())
        .find(|raw| raw.contains(&format!("To: {to}")) && raw.contains(marker))
        .unwrap_or_else(|| panic!("the e-mail to {to} is encoded: {marker:?} is not in its raw text"))
}

both!(e_mails_read_as_written_in_the_raw_file);
async fn e_mails_read_as_written_in_the_raw_file() {
    let t = TestApp::spawn().await;
    // ASCII: 7bit, the lines as written (no quoted-printable soft breaks).
    let ascii = "plain@uni.example.edu";
    t.approved_researcher(ascii).await;
    let raw = raw_mail(&t, ascii, "was approved. Your access lasts until").await;
    assert!(raw.contains("Content-Transfer-Encoding: 7bit"), "{raw}");
    assert!(!raw.contains("=\r\n") && !raw.contains("=\n"), "{raw}");
    assert!(raw.contains("Hello Grace Hopper,"), "{raw}");

    // A name beyond ASCII: 8bit, still readable as typed.
    let other = "zoe@uni.example.edu";
    let (status, _) = t
        .apply(
            &client(),
            &[
                ("name", "Zoë Ångström"),
                ("email", other),
                ("affiliation", "Université de Genève"),
                ("intended_use", "Research"),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let raw = raw_mail(&t, other, "Zoë Ångström").await;
    assert!(raw.contains("Content-Transfer-Encoding: 8bit"), "{raw}");
}
