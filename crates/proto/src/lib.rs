//! Generated code for the `omnifold.v1` contract: prost messages, tonic
//! clients and servers, proto3 JSON (pbjson) impls, and the file descriptor
//! set for server reflection. Nothing here is written by hand.

#![allow(clippy::all, missing_docs)]

/// `omnifold.v1`: events, profiles and the three services.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/omnifold.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/omnifold.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of every omnifold proto file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/omnifold_descriptor.bin"));

pub use pbjson_types as wkt;
