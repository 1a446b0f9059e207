//! Migrations: change the environment's database schema, reversibly.

pub use crate::bindings::migration::{Guest as Migration, Outcome};

/// SQL against the environment's database, inside the host's transaction.
pub mod sql {
    pub use crate::bindings::migration::gantry::plugin::sql::{Rows, Value, execute, query};
}

/// Exports a type implementing [`Migration`] as this component's `migration` world.
#[macro_export]
macro_rules! export_migration {
    ($ty:ident) => {
        $crate::bindings::migration::export_migration_world!($ty with_types_in $crate::bindings::migration);
    };
}
