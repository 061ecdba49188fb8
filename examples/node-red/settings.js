// Node-RED settings for running the mqflux example flows headless (no palette installs, no
// projects, no telemetry), on this machine only. Everything that differs between a hand run and
// the test (tests/node_red.rs) comes from environment variables, which the flows read as
// ${MQFLUX_HOST} / ${MQFLUX_PORT} in the broker node and env.get("INFLUX_URL") in functions:
//
//   MQFLUX_HOST      broker host               (default 127.0.0.1)
//   MQFLUX_PORT      broker port               (default 1883)
//   INFLUX_URL       InfluxDB 1.x HTTP API     (default http://127.0.0.1:8086)
//   INFLUX_DB        database the sink writes  (default mqtt_data)
//   ALERT_TEMP_HIGH  alert threshold in °C     (default 28)
//   SIM_PERIODIC     "false": the simulator publishes only on request (nodered/sim/run)
//   NODE_RED_PORT    editor and HTTP port      (default 1880), bound to 127.0.0.1
//
// Run: node node_modules/node-red/red.js --settings settings.js --userDir .node-red
const path = require("path");

const defaults = {
    MQFLUX_HOST: "127.0.0.1",
    MQFLUX_PORT: "1883",
    INFLUX_URL: "http://127.0.0.1:8086",
    INFLUX_DB: "mqtt_data",
    ALERT_TEMP_HIGH: "28",
    SIM_PERIODIC: "true",
};
// Node-RED substitutes ${VAR} from process.env when the flows start: fill in the defaults so an
// unset variable does not become an empty broker port.
for (const [k, v] of Object.entries(defaults)) {
    if (!process.env[k]) process.env[k] = v;
}

module.exports = {
    // The flows ship with the example; --userDir only holds Node-RED's own runtime state.
    flowFile: path.join(__dirname, "flows.json"),
    flowFilePretty: true,
    // The flows hold no credentials (anonymous loopback broker), so nothing is encrypted.
    credentialSecret: false,
    uiHost: "127.0.0.1",
    uiPort: Number(process.env.NODE_RED_PORT || 1880),
    logging: {
        console: { level: process.env.NODE_RED_LOG_LEVEL || "info", metrics: false, audit: false },
    },
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false },
        modules: { allowInstall: false },
    },
    editorTheme: {
        projects: { enabled: false },
        tours: false,
    },
    telemetry: { enabled: false },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    functionExternalModules: false,
    exportGlobalContextKeys: false,
};
