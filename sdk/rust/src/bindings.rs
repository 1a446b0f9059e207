//! Bindings generated from `wit/plugin.wit`. Plugin authors use the modules at
//! the crate root; these are public only for the export macros.

/// Imports shared by every world.
pub mod capabilities {
    wit_bindgen::generate!({
        world: "capabilities",
        path: "../../wit",
    });
}

/// Generates one plugin world, reusing the shared imports, with an exported
/// macro that plugins call through `export_gate!` and friends.
macro_rules! plugin_world {
    ($world:tt, $macro_name:tt, $module:tt) => {
        wit_bindgen::generate!({
            world: $world,
            path: "../../wit",
            with: {
                "gantry:plugin/types@0.1.0": crate::bindings::capabilities::gantry::plugin::types,
                "gantry:plugin/log@0.1.0": crate::bindings::capabilities::gantry::plugin::log,
                "gantry:plugin/secrets@0.1.0": crate::bindings::capabilities::gantry::plugin::secrets,
                "gantry:plugin/http@0.1.0": crate::bindings::capabilities::gantry::plugin::http,
                "gantry:plugin/clock@0.1.0": crate::bindings::capabilities::gantry::plugin::clock,
            },
            pub_export_macro: true,
            export_macro_name: $macro_name,
            default_bindings_module: $module,
        });
    };
}

/// The `gate` world.
pub mod gate {
    plugin_world!("gate", "export_gate_world", "gantry_sdk::bindings::gate");
}

/// The `notifier` world.
pub mod notifier {
    plugin_world!(
        "notifier",
        "export_notifier_world",
        "gantry_sdk::bindings::notifier"
    );
}

/// The `migration` world.
pub mod migration {
    plugin_world!(
        "migration",
        "export_migration_world",
        "gantry_sdk::bindings::migration"
    );
}
