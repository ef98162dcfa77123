//! The generated gRPC API (`proto/lift.proto`, package `lift.v1`).

// Generated code; its shape is prost's, not ours.
#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("lift.v1");

/// Encoded descriptors of `lift.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lift_descriptor.bin"));
