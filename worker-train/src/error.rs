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
    #[error("training thread failed: {0}")]
    Thread(String),
    /// A newer claim generation owns the job; the run stops without writing or reporting.
    #[error("claim generation {0} was superseded")]
    ClaimLost(u32),
}
