//! Bindings generated from `wit/plugin.wit`. Plugin authors use the modules at
//! the crate root; these are public only for the export macros.

/// Imports shared by every world.
pub mod capabilities {
    wit_bindgen::generate!({
        world: "capabilities",
        path: "../../wit",
    });
}

/// The `gate` world.
pub mod gate {
    wit_bindgen::generate!({
        world: "gate",
        path: "../../wit",
        with: {
            "gantry:plugin/types@0.1.0": crate::bindings::capabilities::gantry::plugin::types,
            "gantry:plugin/log@0.1.0": crate::bindings::capabilities::gantry::plugin::log,
            "gantry:plugin/secrets@0.1.0": crate::bindings::capabilities::gantry::plugin::secrets,
            "gantry:plugin/http@0.1.0": crate::bindings::capabilities::gantry::plugin::http,
            "gantry:plugin/clock@0.1.0": crate::bindings::capabilities::gantry::plugin::clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_gate_world",
        default_bindings_module: "gantry_sdk::bindings::gate",
    });
}

/// The `notifier` world.
pub mod notifier {
    wit_bindgen::generate!({
        world: "notifier",
        path: "../../wit",
        with: {
            "gantry:plugin/types@0.1.0": crate::bindings::capabilities::gantry::plugin::types,
            "gantry:plugin/log@0.1.0": crate::bindings::capabilities::gantry::plugin::log,
            "gantry:plugin/secrets@0.1.0": crate::bindings::capabilities::gantry::plugin::secrets,
            "gantry:plugin/http@0.1.0": crate::bindings::capabilities::gantry::plugin::http,
            "gantry:plugin/clock@0.1.0": crate::bindings::capabilities::gantry::plugin::clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_notifier_world",
        default_bindings_module: "gantry_sdk::bindings::notifier",
    });
}

/// The `migration` world.
pub mod migration {
    wit_bindgen::generate!({
        world: "migration",
        path: "../../wit",
        with: {
            "gantry:plugin/types@0.1.0": crate::bindings::capabilities::gantry::plugin::types,
            "gantry:plugin/log@0.1.0": crate::bindings::capabilities::gantry::plugin::log,
            "gantry:plugin/secrets@0.1.0": crate::bindings::capabilities::gantry::plugin::secrets,
            "gantry:plugin/http@0.1.0": crate::bindings::capabilities::gantry::plugin::http,
            "gantry:plugin/clock@0.1.0": crate::bindings::capabilities::gantry::plugin::clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_migration_world",
        default_bindings_module: "gantry_sdk::bindings::migration",
    });
}
