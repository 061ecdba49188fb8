//! What mapping one publish gives: the lines it appended (`Mapped`), or why none (`Skip`).

/// Why a publish produced no point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Excluded by `sink.exclude` or a rule with `store = false` (not a loss: configured).
    Excluded,
    EmptyPayload,
    NotUtf8,
    /// Not JSON, number or line protocol, and the rule says `non_numeric = "skip"`.
    UnparsedPayload,
    /// Nothing storable left (e.g. `{}`, JSON null, every field conflicting).
    NoFields,
    /// Every field conflicted with the type the database has.
    TypeConflict,
}

/// What mapping one publish appended to the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub lines: usize,
    /// Fields left out or converted because of a type conflict.
    pub conflicting_fields: usize,
    /// Passthrough lines left out because of a type conflict.
    pub dropped_lines: usize,
}
