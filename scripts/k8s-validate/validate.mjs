// Validates a stream of Kubernetes manifests (YAML documents on stdin)
// against the official OpenAPI schemas, through the kubernetes-models
// package's validators. Prints one line per document; exits 1 when any
// document is invalid or of a kind it does not know.
import { parseAllDocuments } from "yaml";

const text = await new Promise((resolve) => {
  let data = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => (data += chunk));
  process.stdin.on("end", () => resolve(data));
});

let failed = false;
const docs = parseAllDocuments(text).filter((d) => d.contents !== null);
for (const [i, doc] of docs.entries()) {
  if (doc.errors.length > 0) {
    console.log(`document ${i}: not YAML: ${doc.errors[0].message}`);
    failed = true;
    continue;
  }
  const object = doc.toJS();
  const { apiVersion, kind } = object;
  // "batch/v1" -> kubernetes-models/batch/v1/Job; "v1" -> kubernetes-models/v1/Service
  const module = `kubernetes-models/${apiVersion}/${kind}`;
  let Model;
  try {
    Model = (await import(module))[kind];
  } catch (e) {
    console.log(`document ${i}: unknown kind ${apiVersion} ${kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`valid ${apiVersion} ${kind} ${object.metadata?.name}`);
  } catch (e) {
    console.log(`invalid ${apiVersion} ${kind} ${object.metadata?.name}: ${e.message}`);
    failed = true;
  }
}
if (docs.length === 0) {
  console.log("no document on stdin");
  failed = true;
}
process.exit(failed ? 1 : 0);
