// Recomputes every value of v2.json from its inputs alone, with Node's own crypto (Node >= 20, no
// packages): commitments, sealed tokens (AES-256-GCM), the JCS text of the hashed envelope (RFC 8785),
// leaf_data and the RFC 6962 leaf hash.  Usage: node verify.mjs [path/to/v2.json]
// Prints one line per case and "N passed, M failed"; exits 1 on any mismatch.
import { createCipheriv, createHash } from "node:crypto";
import { readFileSync } from "node:fs";

const file = process.argv[2] ?? new URL("./v2.json", import.meta.url);
const vectors = JSON.parse(readFileSync(file, "utf8"));

// RFC 8785: ECMAScript number and string forms (JSON.stringify), object keys sorted by UTF-16 code units.
function jcs(value) {
  if (Array.isArray(value)) return "[" + value.map(jcs).join(",") + "]";
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return "{" + keys.map((k) => JSON.stringify(k) + ":" + jcs(value[k])).join(",") + "}";
  }
  return JSON.stringify(value);
}

const sha256 = (...parts) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
};
const hex = (s) => Buffer.from(s, "hex");

let passed = 0;
let failed = 0;
function check(what, got, want) {
  if (got === want) return true;
  console.log(`  MISMATCH ${what}\n    got  ${got}\n    want ${want}`);
  return false;
}

for (const c of vectors.cases) {
  let ok = true;
  const clear = c.clear;
  const payload = { ...clear.payload };
  const sealed = {};
  for (const [name, m] of Object.entries(c.members)) {
    const plain = Buffer.concat([hex(m.salt), Buffer.from(jcs(clear.payload[name]), "utf8")]);
    ok &&= check(`${name} committed bytes`, plain.toString("hex"), m.committed_bytes);
    const digest = sha256(plain).toString("hex");
    ok &&= check(`${name} commitment`, "cm:" + digest, m.commitment);
    const { epoch, key } = c.keys[m.category];
    const aad = Buffer.from(
      `pcc-field-v1\0${clear.vehicle}\0${clear.event_id}\0$.payload.${name}\0${m.category}\0${epoch}`,
      "utf8",
    );
    ok &&= check(`${name} aad`, aad.toString("hex"), m.aad);
    const cipher = createCipheriv("aes-256-gcm", hex(key), hex(m.nonce));
    cipher.setAAD(aad);
    const body = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    const token = `enc:v2:${m.category}:${epoch}:${digest}:` + Buffer.concat([hex(m.nonce), body]).toString("base64");
    ok &&= check(`${name} sealed`, token, m.sealed);
    payload[name] = "cm:" + digest;
    sealed[name] = token;
  }
  if (c.region !== null) payload.region = c.region; // public input: the location rounded to 0.1 degree
  const hashed = { ...clear, schema_version: 2, payload };
  const text = jcs(hashed);
  ok &&= check("hashed JCS", text, c.hashed_jcs);
  const leafData = sha256(Buffer.from(text, "utf8"));
  ok &&= check("leaf_data", leafData.toString("hex"), c.leaf_data);
  ok &&= check("leaf_hash", sha256(Buffer.from([0]), leafData).toString("hex"), c.leaf_hash);
  const wire = { ...hashed, ...(Object.keys(sealed).length ? { sealed } : {}) };
  ok &&= check("envelope", jcs(wire), jcs(c.envelope));
  console.log(`${ok ? "ok  " : "FAIL"} case: ${c.name}`);
  ok ? passed++ : failed++;
}
for (const [i, v] of vectors.values.entries()) {
  const text = jcs(v.value);
  const got = "cm:" + sha256(hex(v.salt), Buffer.from(text, "utf8")).toString("hex");
  const ok = check(`value ${i} jcs`, text, v.jcs) && check(`value ${i} commitment`, got, v.commitment);
  console.log(`${ok ? "ok  " : "FAIL"} value ${i}: ${text}`);
  ok ? passed++ : failed++;
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
