//! Host bindings generated from `wit/plugin.wit`, in one place.
//!
//! The shared interfaces are generated once, with the `capabilities` world;
//! the three plugin worlds reuse them through `with`.

/// The shared types and host capabilities.
pub mod capabilities {
    wasmtime::component::bindgen!({
        world: "capabilities",
        path: "../../wit",
        imports: {
            "gantry:plugin/http.send": async,
        },
    });
}

/// Generates one plugin world, reusing the shared interfaces; `imports`
/// names the world's own imports the host answers asynchronously.
macro_rules! plugin_world {
    ($world:tt) => {
        plugin_world!($world, {});
    };
    ($world:tt, { $($import:literal),* }) => {
        wasmtime::component::bindgen!({
            world: $world,
            path: "../../wit",
            imports: { $($import: async,)* },
            with: {
                "gantry:plugin/types": crate::bindings::capabilities::gantry::plugin::types,
                "gantry:plugin/log": crate::bindings::capabilities::gantry::plugin::log,
                "gantry:plugin/secrets": crate::bindings::capabilities::gantry::plugin::secrets,
                "gantry:plugin/http": crate::bindings::capabilities::gantry::plugin::http,
                "gantry:plugin/clock": crate::bindings::capabilities::gantry::plugin::clock,
            },
            exports: { default: async },
        });
    };
}

/// The `gate` world.
pub mod gate {
    plugin_world!("gate");
}

/// The `notifier` world.
pub mod notifier {
    plugin_world!("notifier");
}

/// The `migration` world: its `sql` statements run on PostgreSQL.
pub mod migration {
    plugin_world!("migration", {
        "gantry:plugin/sql.execute",
        "gantry:plugin/sql.query"
    });
}
