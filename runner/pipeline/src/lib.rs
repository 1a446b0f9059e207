//! The pipeline file (`gantry.yaml`): what a pipeline promotes, through which
//! environments, with which steps. [`load`] parses and checks it; every
//! problem names the line, the column and the field.

mod load;
mod locate;
mod model;
mod shape;
mod together;

pub use load::{Error, Problem, limits, load, parse, warnings};
pub use model::*;
pub use together::check_together;
