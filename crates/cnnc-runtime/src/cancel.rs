//! `Cancel`: a request to stop a long computation, shared between whoever asks (a Ctrl-C
//! handler) and the code that checks it between units of work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared stop flag: clones share one flag, and a new one is not set. Code given one checks
/// it between units of work (a node, a kernel step, a benchmark round) and stops with its
/// phase's `Cancelled` error, so a unit is never cut in half. Two tokens are equal when they
/// share their flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag of its own, not set.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks every holder to stop; true when it had been asked already (a second Ctrl-C).
    pub fn request(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    /// Whether a stop was asked for since the last [`Cancel::clear`].
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Forgets the request, before the next command.
    pub fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl PartialEq for Cancel {
    fn eq(&self, other: &Cancel) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Cancel {}

/// Whether `cancel` is given and set: the check of code whose token is optional.
pub fn cancel_requested(cancel: Option<&Cancel>) -> bool {
    cancel.is_some_and(Cancel::is_requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_flag_and_new_tokens_do_not() {
        let asker = Cancel::new();
        let worker = asker.clone();
        let other = Cancel::new();
        assert!(!cancel_requested(Some(&worker)));
        assert!(!asker.request(), "the first request is the first");
        assert!(worker.is_requested() && cancel_requested(Some(&worker)));
        assert!(asker.request(), "the second request knows it is the second");
        assert!(!other.is_requested() && !cancel_requested(None));
        assert_eq!(asker, worker);
        assert_ne!(asker, other);
        worker.clear();
        assert!(!asker.is_requested());
    }
}
