//! The memory budget: the process's memory, part by part, added up and checked against `budgets.memory-mib`.
//!
//! This module is a leaf. Every component reports its own sizes (a source its resident bytes, the preparer
//! its scratch, the engine its weights and arena, the shared-memory layout its size); the runtime lists them
//! as [`Part`]s of a [`MemoryPlan`] (`runtime::memory`), once from the configuration and the manifest alone
//! before any model is loaded, and again with the planned models' figures. [`MemoryPlan::check`] refuses a
//! plan over the budget with a message that lists each part and says what to shrink.

use std::fmt;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// The process's own heap besides the listed parts: the parsed models' graphs, the tokenizer, the manifest,
/// logging, the system allocator's slack. Measured at about 7 MiB for the demo (docs/memory.md); a
/// tokenizer with a real vocabulary takes more, so this has headroom.
pub const STARTUP_HEAP_BYTES: u64 = 16 * MIB;
/// Stack of each thread ocellus starts (Rust's default for spawned threads; the main thread's is counted
/// the same). Resident only as far as used, unless memory is locked.
pub const THREAD_STACK_BYTES: u64 = 2 * MIB;
/// Code and libraries when `/proc/self/maps` cannot be read.
pub const CODE_BYTES_UNKNOWN: u64 = 64 * MIB;

/// The names of the parts, in the order the runtime lists them.
pub mod parts {
    pub const FRAME_POOLS: &str = "frame pools";
    pub const SOURCES: &str = "camera sources";
    pub const PREPARED: &str = "prepared tensors";
    pub const WEIGHTS: &str = "model weights";
    pub const LOADING: &str = "model loading";
    pub const ENGINE: &str = "tract working memory";
    /// What an engine with its own allocator (onnxruntime) took at start-up, measured.
    pub const ENGINE_HEAP: &str = "engine's own memory";
    pub const TEXT: &str = "text encoder runs";
    pub const RESULTS: &str = "result buffers";
    pub const SHM: &str = "shared-memory segment";
    pub const RECORDER: &str = "flight recorder";
    pub const CODE: &str = "code and libraries";
    pub const STACKS: &str = "thread stacks";
    pub const HEAP: &str = "start-up heap";
}

/// One part of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What it is, e.g. "frame pools" (one of [`parts`]).
    pub name: &'static str,
    /// How it is made up, e.g. "2 x 4 x 600 KiB".
    pub detail: String,
    pub bytes: u64,
    /// How to make it smaller ("" for the fixed overhead).
    pub shrink: &'static str,
}

/// The process's memory, part by part, against the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// `budgets.memory-mib` in bytes.
    pub budget_bytes: u64,
    pub parts: Vec<Part>,
    /// Size of the frame-path region (included in the parts as the engine's working memory).
    pub arena_bytes: u64,
    /// Whether the model figures come from the planned models rather than the manifest alone.
    pub planned: bool,
}

/// A plan that does not fit the budget; its `Display` is the message a person acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExceeded {
    pub needed: u64,
    pub allowed: u64,
    message: String,
}

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BudgetExceeded {}

/// Bytes as a person reads them: "600 KiB", "4.7 MiB", "1.2 GiB".
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < KIB {
        format!("{bytes} B")
    } else if bytes < MIB {
        format!("{:.0} KiB", b / KIB as f64)
    } else if bytes < 1024 * MIB {
        format!("{:.1} MiB", b / MIB as f64)
    } else {
        format!("{:.2} GiB", b / (1024 * MIB) as f64)
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// "2 x 1.5 MiB" when all sizes are equal, else the sizes added up.
pub fn each_detail(sizes: &[u64]) -> String {
    match sizes {
        [] => "none".into(),
        [one] => human(*one),
        [first, ..] if sizes.iter().all(|s| s == first) => {
            format!("{} x {}", sizes.len(), human(*first))
        }
        _ => sizes
            .iter()
            .map(|&b| human(b))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

/// "n x size" per camera, "cameras x n x size" when all are equal, else the terms added up.
pub fn sum_detail(items: &[(u64, u64)]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    if items.iter().all(|&i| i == items[0]) && items.len() > 1 {
        let (n, each) = items[0];
        return format!("{} x {n} x {}", items.len(), human(each));
    }
    items
        .iter()
        .map(|&(n, each)| {
            if n == 1 {
                human(each)
            } else {
                format!("{n} x {}", human(each))
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

impl MemoryPlan {
    /// An empty plan against a budget of `budget_bytes`; `planned` says whether the model figures will come
    /// from planned models.
    pub fn new(budget_bytes: u64, planned: bool) -> MemoryPlan {
        MemoryPlan {
            budget_bytes,
            parts: Vec::new(),
            arena_bytes: 0,
            planned,
        }
    }

    /// Adds a part.
    pub fn push(&mut self, part: Part) {
        self.parts.push(part);
    }

    /// Sum of the parts.
    pub fn total_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// The part called `name`, if any.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// Ok if the total fits `budgets.memory-mib`; otherwise the message lists every part and the fix.
    pub fn check(&self) -> Result<(), BudgetExceeded> {
        let needed = self.total_bytes();
        if needed <= self.budget_bytes {
            return Ok(());
        }
        let parts = self
            .parts
            .iter()
            .filter(|p| p.bytes > 0)
            .map(|p| format!("{} {} = {}", p.name, p.detail, human(p.bytes)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut largest: Vec<&Part> = self.parts.iter().filter(|p| !p.shrink.is_empty()).collect();
        largest.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        let shrink = largest
            .iter()
            .take(2)
            .map(|p| format!("{} ({})", p.name, p.shrink))
            .collect::<Vec<_>>()
            .join(" or ");
        let unplanned = if self.planned {
            ""
        } else {
            " (before the models are planned: tract's working memory comes on top)"
        };
        Err(BudgetExceeded {
            needed,
            allowed: self.budget_bytes,
            message: format!(
                "budget exceeded: {} needed, {} MiB allowed (budgets.memory-mib){unplanned}: {parts}; raise budgets.memory-mib to at least {} or shrink {shrink}",
                mib(needed),
                self.budget_bytes / MIB,
                needed.div_ceil(MIB),
            ),
        })
    }
}

impl fmt::Display for MemoryPlan {
    /// The breakdown, one part per line, then the total against the budget.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            writeln!(f, "{:<22} {:>10}  {}", p.name, human(p.bytes), p.detail)?;
        }
        write!(
            f,
            "{:<22} {:>10}  of {} MiB (budgets.memory-mib){}",
            "total",
            mib(self.total_bytes()),
            self.budget_bytes / MIB,
            if self.planned {
                ""
            } else {
                ", before the models are planned"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(614_400), "600 KiB");
        assert_eq!(human(5 * MIB / 2), "2.5 MiB");
        assert_eq!(human(3 * 1024 * MIB / 2), "1.50 GiB");
        assert_eq!(sum_detail(&[(4, 614_400), (4, 614_400)]), "2 x 4 x 600 KiB");
        assert_eq!(
            sum_detail(&[(4, 614_400), (3, 2048)]),
            "4 x 600 KiB + 3 x 2 KiB"
        );
        assert_eq!(each_detail(&[2048, 2048]), "2 x 2 KiB");
        assert_eq!(each_detail(&[2048, 4096]), "2 KiB + 4 KiB");
    }
}
