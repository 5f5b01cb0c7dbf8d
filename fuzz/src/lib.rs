//! Support code of the fuzz targets in `fuzz_targets/`: the whole-request
//! target `request_flow` (its input, the request it builds, the glue that
//! drives the filter's flow and the checks, and the seeds written from it),
//! and an independent reading of ambiguous JSON-RPC members for
//! `parse_body`.

pub mod members;
pub mod request_flow;
