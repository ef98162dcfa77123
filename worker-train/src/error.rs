use lift_broker::BrokerError;
use lift_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("store: {}", .0.with_causes())]
    Store(#[from] StoreError),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("engine: {0}")]
    Engine(#[from] lift_engine::EngineError),
    #[error("checkpoint {key} is unreadable: {reason}")]
    Checkpoint { key: String, reason: String },
    #[error("the job has no training tasks (every chunk failed or produced none)")]
    NoTasks,
    /// A step's loss was NaN or infinite: every later step and the adapter would be too, and
    /// a NaN written into the adapter commit or a progress event is unreadable.
    #[error("training diverged at step {step}: the loss became {loss} (a lower learning rate may train)")]
    Diverged { step: u64, loss: f32 },
    #[error("training thread failed: {0}")]
    Thread(String),
    /// A newer claim generation owns the job; the run stops without writing or reporting.
    #[error("claim generation {0} was superseded")]
    ClaimLost(u32),
}
