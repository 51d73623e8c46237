//! Segments: rules, their text form, evaluation and always-current member bitmaps.

pub mod rule;
pub mod text;
