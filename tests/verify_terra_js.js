// Verifies a webhook delivery with Terra's own JavaScript SDK (npm `terra-api`,
// `verifyTerraWebhookSignature`), code terra-ingest did not write. tests/run-all.sh installs
// the package into ~/.cache/terra-ingest/terra-api-js and sets NODE_PATH to it.
//
// usage: node verify_terra_js.js SECRET BODY_FILE TERRA_SIGNATURE
// prints "ok", or "refused: <why>"
const fs = require("fs");
const { verifyTerraWebhookSignature } = require("terra-api");

const [secret, file, header] = process.argv.slice(2);
// the SDK takes the body as text (it signs its UTF-8 encoding)
verifyTerraWebhookSignature(fs.readFileSync(file, "utf8"), header, secret).then(
  () => console.log("ok"),
  (err) => console.log(`refused: ${err.message}`),
);
