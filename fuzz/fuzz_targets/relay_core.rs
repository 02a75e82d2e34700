#![no_main]
//! Fuzz target: see `synapse_sfu::fuzzing::relay_core`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| synapse_sfu::fuzzing::relay_core(data));
