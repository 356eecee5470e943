//! The model gateway's workspace end: an HTTP/1.1 server on a loopback
//! port of the workspace (of the container's own network namespace, so it
//! works with `workspace.network = "none"`; of the host for the local
//! workspace). It answers nothing itself but 404s and 413s: each model
//! call waits in a queue until convoy fetches it over the helper's stream
//! (`GatewayNext`, a long poll) and answers it (`GatewayAnswer`). No
//! exec, no container networking, no port published on the host: the
//! agent's requests travel on the stream the helper already has.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{oneshot, Notify};

use super::super::protocol::{ErrorKind, GatewayAnswer, GatewayCall, OpError};

/// The largest request body the gateway takes (a long conversation's
/// messages fit many times over).
const MAX_BODY: usize = 64 << 20;

/// The paths the gateway serves; anything else is a 404.
const ROUTES: [(&str, &str); 2] = [("POST", "/v1/chat/completions"), ("GET", "/v1/models")];

/// The gateway's queue: calls not fetched yet, and the HTTP clients
/// waiting for their answers.
#[derive(Default)]
pub(super) struct Gateway {
    port: Mutex<Option<u16>>,
    next: AtomicU64,
    queue: Mutex<VecDeque<GatewayCall>>,
    queued: Notify,
    waiting: Mutex<HashMap<u64, oneshot::Sender<GatewayAnswer>>>,
}

impl Gateway {
    /// Starts the server (once): on `port` if given, else on one the
    /// system picks. Returns the port.
    pub async fn open(self: &Arc<Self>, port: Option<u16>) -> Result<u16, OpError> {
        if let Some(p) = *self.port.lock().expect("port lock") {
            return Ok(p);
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
            .await
            .map_err(|e| OpError::io("the gateway cannot listen on loopback", &e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| OpError::io("the gateway's port", &e))?
            .port();
        {
            let mut p = self.port.lock().expect("port lock");
            if let Some(p) = *p {
                // Another open won the race; this listener goes.
                return Ok(p);
            }
            *p = Some(bound);
        }
        tokio::spawn(self.clone().accept(listener));
        Ok(bound)
    }

    async fn accept(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: let some go.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.serve(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn serve(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        if !ROUTES.contains(&(method.as_str(), path.as_str())) {
            return error(
                StatusCode::NOT_FOUND,
                &format!("{method} {path} is not served here: only POST /v1/chat/completions and GET /v1/models"),
            );
        }
        let authorization = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body could not be read (at most {MAX_BODY} bytes): {e}"),
                )
            }
        };
        let Ok(body) = String::from_utf8(body.to_vec()) else {
            return error(StatusCode::BAD_REQUEST, "the request body is not UTF-8");
        };
        let call = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("waiting lock").insert(call, tx);
        // A client that goes away drops this future: its entry goes too.
        let _entry = Waiting {
            gateway: self,
            call,
        };
        self.queue
            .lock()
            .expect("queue lock")
            .push_back(GatewayCall {
                call,
                method,
                path,
                authorization,
                body,
            });
        self.queued.notify_one();
        match rx.await {
            Ok(answer) => Response::builder()
                .status(answer.status)
                .header(hyper::header::CONTENT_TYPE, answer.content_type)
                .body(Full::new(Bytes::from(answer.body)))
                .unwrap_or_else(|e| {
                    error(
                        StatusCode::BAD_GATEWAY,
                        &format!("convoy's answer was not a valid response: {e}"),
                    )
                }),
            Err(_) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the workspace helper is ending; try again",
            ),
        }
    }

    /// Up to `max` queued calls, waiting for the first.
    pub async fn next(&self, max: u32) -> Vec<GatewayCall> {
        loop {
            let notified = self.queued.notified();
            {
                let mut queue = self.queue.lock().expect("queue lock");
                if !queue.is_empty() {
                    let n = queue.len().min(max.max(1) as usize);
                    let calls: Vec<GatewayCall> = queue.drain(..n).collect();
                    if !queue.is_empty() {
                        // More for another poll.
                        self.queued.notify_one();
                    }
                    return calls;
                }
            }
            notified.await;
        }
    }

    /// Hands `answer` to its client; one that went away is fine.
    pub fn answer(&self, answer: GatewayAnswer) -> Result<(), OpError> {
        let waiter = self
            .waiting
            .lock()
            .expect("waiting lock")
            .remove(&answer.call);
        match waiter {
            Some(tx) => {
                let _ = tx.send(answer);
                Ok(())
            }
            None if answer.call == 0 || answer.call > self.next.load(Ordering::Relaxed) => {
                Err(OpError::new(
                    ErrorKind::BadRequest,
                    format!("no gateway call {}", answer.call),
                ))
            }
            None => Ok(()),
        }
    }
}

/// Removes a call's waiting entry (and its queued request, if convoy has
/// not fetched it) when its client's future ends, on every path.
struct Waiting<'a> {
    gateway: &'a Gateway,
    call: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.gateway
            .waiting
            .lock()
            .expect("waiting lock")
            .remove(&self.call);
        self.gateway
            .queue
            .lock()
            .expect("queue lock")
            .retain(|c| c.call != self.call);
    }
}

/// An OpenAI-style error body.
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace(' ', "_");
    let body = super::super::protocol::openai_error(message, &code);
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a static response")
}
