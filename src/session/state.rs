//! What the session knows about its protocol state, learned from the messages passing through.

/// Transaction status as the backend last reported it in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct SessionState {
    pub tx: TxStatus,
    /// Sync or Query messages sent whose ReadyForQuery has not come back yet.
    pub awaiting_ready: usize,
    /// DDL went through and the catalog has not been re-read since.
    pub ddl_pending: bool,
    /// Extended-protocol messages were sent since the last Sync: their replies may still come,
    /// though no ReadyForQuery is awaited for them yet.
    pub unsynced: bool,
}

impl Default for SessionState {
    fn default() -> Self {
        Self { tx: TxStatus::Idle, awaiting_ready: 0, ddl_pending: false, unsynced: false }
    }
}

impl SessionState {
    /// A client message of type `tag` other than Query, Parse, Sync and FunctionCall was sent.
    pub fn note_extended(&mut self, tag: u8) {
        if matches!(tag, b'B' | b'E' | b'D' | b'C' | b'H') {
            self.unsynced = true;
        }
    }

    /// Idle between transactions with nothing in flight: the session may be closed or handed over.
    pub fn is_quiet(&self) -> bool {
        self.tx == TxStatus::Idle && self.awaiting_ready == 0 && !self.unsynced
    }
}
