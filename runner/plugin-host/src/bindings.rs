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

/// The `gate` world.
pub mod gate {
    wasmtime::component::bindgen!({
        world: "gate",
        path: "../../wit",
        with: {
            "gantry:plugin/types": crate::bindings::capabilities::gantry::plugin::types,
            "gantry:plugin/log": crate::bindings::capabilities::gantry::plugin::log,
            "gantry:plugin/secrets": crate::bindings::capabilities::gantry::plugin::secrets,
            "gantry:plugin/http": crate::bindings::capabilities::gantry::plugin::http,
            "gantry:plugin/clock": crate::bindings::capabilities::gantry::plugin::clock,
        },
        exports: { default: async },
    });
}

/// The `notifier` world.
pub mod notifier {
    wasmtime::component::bindgen!({
        world: "notifier",
        path: "../../wit",
        with: {
            "gantry:plugin/types": crate::bindings::capabilities::gantry::plugin::types,
            "gantry:plugin/log": crate::bindings::capabilities::gantry::plugin::log,
            "gantry:plugin/secrets": crate::bindings::capabilities::gantry::plugin::secrets,
            "gantry:plugin/http": crate::bindings::capabilities::gantry::plugin::http,
            "gantry:plugin/clock": crate::bindings::capabilities::gantry::plugin::clock,
        },
        exports: { default: async },
    });
}

/// The `migration` world. Its `sql` host side arrives with the PostgreSQL
/// migrations; until then every statement fails with a clear error.
pub mod migration {
    wasmtime::component::bindgen!({
        world: "migration",
        path: "../../wit",
        with: {
            "gantry:plugin/types": crate::bindings::capabilities::gantry::plugin::types,
            "gantry:plugin/log": crate::bindings::capabilities::gantry::plugin::log,
            "gantry:plugin/secrets": crate::bindings::capabilities::gantry::plugin::secrets,
            "gantry:plugin/http": crate::bindings::capabilities::gantry::plugin::http,
            "gantry:plugin/clock": crate::bindings::capabilities::gantry::plugin::clock,
        },
        exports: { default: async },
    });
}
