//! Results people compare: SVG figures drawn like the paper's.

pub mod svg;
