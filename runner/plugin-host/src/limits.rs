//! The per-call memory cap, with a typed error naming the limit.

use wasmtime::ResourceLimiter;

/// Raised (as a trap) when a guest asks for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded: the guest asked for {requested} bytes")]
pub(crate) struct MemoryLimitExceeded {
    pub limit: usize,
    pub requested: usize,
}

/// Caps linear memory and tables for one store.
///
/// Unlike `wasmtime::StoreLimits`, a refused growth traps at once with
/// [`MemoryLimitExceeded`], so every guest language reports the same error
/// (a Rust guest would otherwise abort with a bare `unreachable`).
pub(crate) struct MemoryLimiter {
    memory_bytes: usize,
    table_elements: usize,
}

impl MemoryLimiter {
    pub fn new(memory_bytes: usize) -> Self {
        MemoryLimiter {
            memory_bytes,
            table_elements: 100_000,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory_bytes,
                requested: desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}
