//! MQTT wire format for 3.1, 3.1.1 and 5.0: one `Packet` type for every version.
//!
//! This module does no I/O beyond reading one frame from a `Read` and knows nothing about broker
//! state. It is split by layer, not by version or packet, so that a version difference is a small
//! branch in one place rather than a copied decoder:
//!
//! | layer | file | what it knows |
//! | --- | --- | --- |
//! | framing | `framing.rs` | fixed header, Remaining Length, cutting frames off a stream or a buffer; nothing of bodies |
//! | data types | `fields.rs` | integers, strings, binary data (section 1.5), read with errors that name the field |
//! | properties | `properties.rs` | one table per property id (name, type, allowed packets) used by both directions |
//! | packets | `packets/` | decode and encode of each packet family on top of the layers above; `decode_packet` / `encode_packet` dispatch (`packets/dispatch.rs`) |
//! | model | `types.rs` | the packet structs, [`Properties`], [`Packet`], reason codes |
//! | errors | `error.rs` | [`DecodeError`] and the spec rule each error cites |
//!
//! Decoding is two steps: [`read_frame`] (or [`frame_in_place`] on a read buffer) cuts one packet
//! off the stream with its size checked before the body is allocated, then [`decode_packet`]
//! (or, for the hot PUBLISH, [`decode_publish`] / [`decode_publish_view`]) validates every field.
//! Encoding is [`encode_packet`], and [`encode_publish`] for one shared message written to many
//! subscribers.
//!
//! Where to add a packet: its struct and `Packet` variant in `types.rs`, its decode and encode
//! functions in the family file under `packets/` (or a new one), and the arms in `decode_packet`
//! and `encode_packet` (`packets/dispatch.rs`). A v5 property: a `Properties` field, a row in
//! `properties::PROPERTIES`, its arm in `store_property` and its entry in `visit_properties`.

mod error;
mod fields;
mod framing;
mod packets;
mod properties;
#[cfg(test)]
mod testutil;
mod types;

// The files above import each other directly (`super::types::Packet`), never through these
// re-exports, so this front door is on no import cycle.
pub use error::DecodeError;
pub use framing::{
    frame_in, frame_in_place, read_frame, variable_int_len, write_variable_int, Frame, FrameRef,
    MAX_REMAINING_LENGTH,
};
pub use packets::{
    decode_packet, decode_publish, decode_publish_view, encode_packet, encode_publish, PublishView,
};
pub use types::{
    connack_v3, reason, Ack, Auth, ConnAck, Connect, Disconnect, Packet, Properties,
    ProtocolVersion, Publish, PublishProperties, QoS, SubAck, Subscribe, SubscribeFilter,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

/// The decoding half under its former path (`protocol::decode::…`), which the broker, the store
/// and the fuzz targets use.
pub mod decode {
    pub use super::{
        decode_packet, decode_publish, decode_publish_view, frame_in, frame_in_place, read_frame,
        DecodeError, Frame, FrameRef, PublishView,
    };
}

/// The encoding half under its former path (`protocol::encode::…`).
pub mod encode {
    pub use super::{encode_packet, encode_publish, variable_int_len, write_variable_int};
}
