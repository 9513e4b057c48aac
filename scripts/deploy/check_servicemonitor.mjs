// Validates ServiceMonitors (a JSON array, as check_rendered.py split writes them) against the
// prometheus-operator CRD's schema, with @kubernetes-models/prometheus-operator (an npm package
// generated from the operator's Go types). For scripts/deploy/check.sh:
//   node check_servicemonitor.mjs NODE_MODULES_DIR FILE.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, file] = process.argv.slice(2);
const { ServiceMonitor } = await import(pathToFileURL(join(modules,
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js")).href);
let failed = 0;
const docs = JSON.parse(readFileSync(file, "utf8"));
for (const doc of docs) {
    try {
        new ServiceMonitor(doc).validate();
        console.log(`${file}: ServiceMonitor/${doc.metadata.name} valid`);
    } catch (e) {
        failed++;
        console.log(`${file}: ServiceMonitor/${doc.metadata.name}: ${e.message}`);
    }
}
process.exit(failed ? 1 : 0);
