//! The daemon's own Noise relay modules (channel, frame, framing), included by path, and the
//! harness side built on them (`noise_harness`), for the test crates that play the harness
//! against a relay stream. Owns no logic of its own.

#[path = "../../src/cloud/noise/channel.rs"]
#[allow(dead_code)]
pub mod channel;
#[path = "../../src/cloud/noise/frame.rs"]
#[allow(dead_code)]
pub mod frame;
#[path = "../../src/cloud/noise/framing.rs"]
#[allow(dead_code)]
pub mod framing;
#[path = "noise_harness.rs"]
pub mod noise_harness;
