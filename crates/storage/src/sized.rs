//! [`ObjectStore::put_stream_sized`]: pieces held to the size announced, for any backend
//! ([`through_put_stream`]) and as the body of one streamed S3 `PutObject` ([`SizedBody`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ObjectStore, Piece, Result, StorageError};

fn differs(key: &str, announced: u64, got: u64) -> StorageError {
    StorageError::SizeDiffers { key: key.to_string(), announced, got }
}

/// `put_stream` of `store`, fed through a relay that counts: pieces past `size`, or an end
/// before it, stop the relay without the end, so `put_stream` commits nothing, and the call
/// fails with [`StorageError::SizeDiffers`].
pub(crate) async fn through_put_stream<S: ObjectStore + ?Sized>(
    store: &S,
    key: &str,
    size: u64,
    mut pieces: mpsc::Receiver<Piece>,
    cancel: &CancellationToken,
) -> Result<u64> {
    let (tx, checked) = mpsc::channel(1);
    let relay = async move {
        let mut got = 0u64;
        while let Some(piece) = pieces.recv().await {
            let piece = match piece {
                Piece::Bytes(bytes) => {
                    got += bytes.len() as u64;
                    if got > size {
                        return Some(got);
                    }
                    Piece::Bytes(bytes)
                }
                Piece::End if got != size => return Some(got),
                Piece::End => {
                    let _ = tx.send(Piece::End).await;
                    return None;
                }
            };
            if tx.send(piece).await.is_err() {
                // The write stopped; its own error says why.
                return None;
            }
        }
        // The writer went away: `put_stream` says so (`Unfinished`).
        None
    };
    let put = store.put_stream(key, checked, cancel);
    tokio::pin!(relay, put);
    tokio::select! {
        biased;
        differed = &mut relay => {
            // The relay has let go of its sender: the write ends, committed only after the end.
            let put = put.await;
            match differed {
                Some(got) => Err(differs(key, size, got)),
                None => put,
            }
        }
        // The write failed or was cancelled first: the pieces are dropped with the relay.
        put = &mut put => put,
    }
}

/// Why a [`SizedBody`] stopped its request, for the caller to report rather than the
/// transport error it causes.
pub(crate) type BodyFailure = Arc<Mutex<Option<StorageError>>>;

/// The body of one streamed upload of exactly `announced` bytes, taken from pieces as they
/// come. It holds the latest piece back until the next one or the end arrives, so the
/// request's last byte is sent only once the object is known whole: a writer that goes away,
/// or pieces that come to another size, stop the request short of its length, and the store
/// commits nothing.
pub(crate) struct SizedBody {
    key: String,
    pieces: mpsc::Receiver<Piece>,
    announced: u64,
    /// Bytes received from the pieces.
    got: u64,
    /// Bytes handed to the request.
    sent: u64,
    held: Option<Bytes>,
    ended: bool,
    failed: bool,
    failure: BodyFailure,
}

impl SizedBody {
    pub(crate) fn new(key: &str, announced: u64, pieces: mpsc::Receiver<Piece>) -> (Self, BodyFailure) {
        let failure = BodyFailure::default();
        let body = Self {
            key: key.to_string(),
            pieces,
            announced,
            got: 0,
            sent: 0,
            held: None,
            ended: false,
            failed: false,
            failure: failure.clone(),
        };
        (body, failure)
    }

    fn fail(&mut self, error: StorageError) -> Poll<Option<std::result::Result<Frame<Bytes>, std::io::Error>>> {
        let message = error.to_string();
        edgecap_common::lock(&self.failure).get_or_insert(error);
        self.failed = true;
        self.held = None;
        Poll::Ready(Some(Err(std::io::Error::other(message))))
    }

    fn give(&mut self, bytes: Bytes) -> Poll<Option<std::result::Result<Frame<Bytes>, std::io::Error>>> {
        self.sent += bytes.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                // Never a clean end: the request must not look whole.
                return Poll::Ready(Some(Err(std::io::Error::other("the upload's body failed"))));
            }
            if this.ended {
                return match this.held.take() {
                    Some(last) => this.give(last),
                    None => Poll::Ready(None),
                };
            }
            match ready!(this.pieces.poll_recv(cx)) {
                Some(Piece::Bytes(bytes)) if bytes.is_empty() => {}
                Some(Piece::Bytes(bytes)) => {
                    this.got += bytes.len() as u64;
                    if this.got > this.announced {
                        return this.fail(differs(&this.key, this.announced, this.got));
                    }
                    if let Some(before) = this.held.replace(bytes) {
                        return this.give(before);
                    }
                }
                Some(Piece::End) if this.got != this.announced => {
                    return this.fail(differs(&this.key, this.announced, this.got));
                }
                Some(Piece::End) => this.ended = true,
                None => return this.fail(StorageError::Unfinished(this.key.clone())),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.ended && self.held.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.announced.saturating_sub(self.sent))
    }
}
