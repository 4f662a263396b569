//! Writes of the state file, in order. Every write carries the whole state
//! and a generation number; a write that finds a newer one already on disk
//! gives up (its content is covered), so the file never goes back in time —
//! also for the synchronous writes at start and stop, which take the next
//! generation like any other.
//!
//! The event loop never waits for the disk: writes run on blocking threads.
//! An operator's action is answered only once a file holding it is on disk
//! (fsync'd): a crash after "done" can no longer lose a flip or a drain.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use log::warn;
use tokio::sync::mpsc;

use crate::{control::proto::Response, state::State};

/// The state file's writer.
pub struct Saver {
    dir: PathBuf,
    /// Generations handed out.
    next: u64,
    /// The generation on disk; held while writing.
    written: Arc<Mutex<u64>>,
}

/// An answer to send once the state it reports is on disk.
pub struct Ack {
    /// Where the answer goes.
    pub reply: mpsc::Sender<Response>,
    /// The answer.
    pub response: Response,
}

impl Saver {
    /// A writer of `dir/state.json`.
    pub fn new(dir: PathBuf) -> Saver {
        Saver {
            dir,
            next: 0,
            written: Arc::default(),
        }
    }

    /// Writes `state` on a blocking thread; then sends `ack`, or, when the
    /// write failed, an error saying the action is in effect but not saved.
    pub fn save(&mut self, state: State, ack: Option<Ack>) {
        self.next += 1;
        let generation = self.next;
        let written = self.written.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = write(&written, generation, &state, &dir);
            if let Err(e) = &outcome {
                warn!("saving the state file: {e}");
            }
            if let Some(Ack { reply, response }) = ack {
                let response = match (outcome, response) {
                    (Ok(()), r) => r,
                    (Err(e), Response::Done { message }) => Response::Error {
                        message: format!(
                            "{message}; in effect now, but saving the state file failed ({e}): a restart of \
                             the daemon would not keep it"
                        ),
                    },
                    (Err(_), r) => r,
                };
                // The CLI may have gone; nothing to do about it.
                let _ = reply.try_send(response);
            }
        });
    }

    /// Writes `state` now, on this thread (start and stop), after every
    /// write handed out before it.
    pub fn save_now(&mut self, state: &State) -> Result<(), String> {
        self.next += 1;
        write(&self.written, self.next, state, &self.dir)
    }
}

fn write(written: &Mutex<u64>, generation: u64, state: &State, dir: &std::path::Path) -> Result<(), String> {
    let mut last = written
        .lock()
        .map_err(|_| "an earlier write panicked".to_owned())?;
    if *last > generation {
        // A newer state is on disk already; it holds this one's changes.
        return Ok(());
    }
    crate::fault::delay("SAVE");
    state.save(dir).map_err(|e| e.to_string())?;
    *last = generation;
    Ok(())
}
