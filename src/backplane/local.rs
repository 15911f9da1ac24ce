//! The in-process backplane of a single node: every effect is delivered
//! here, at once; and `Lossy`, a test double that delivers nothing.

use super::{Backplane, Effect};

/// Hands every effect straight back for delivery on this node.
pub struct Local;

impl Backplane for Local {
    fn publish(&mut self, _: &str, effect: Effect) -> Option<Effect> {
        Some(effect)
    }
}

/// Loses every effect (see `backplane::configured`).
pub struct Lossy;

impl Backplane for Lossy {
    fn publish(&mut self, _: &str, _: Effect) -> Option<Effect> {
        None
    }
}
