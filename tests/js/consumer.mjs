// A JavaScript consumer of `pcc serve`: it learns the service's EIP-712 domain from
// GET /v1/domain, signs one request with ethers and sends it (docs/serving.md, "Signed requests").
//
//   node consumer.mjs request BASE_URL PRIVATE_KEY METHOD PATH [BODY] [--chain-id N]
//       prints {"status", "body", "account", "digest", "message"} as one JSON line;
//       --chain-id signs for another chain than the service's (to see the refusal)
//   node consumer.mjs verify TYPED_DATA_JSON SIGNATURE
//       prints the address that signed a request's typed data (as Python signed it)
import { TypedDataEncoder, Wallet, hexlify, randomBytes, sha256, verifyTypedData } from "ethers";

async function request(base, key, method, path, body, chainId) {
  const doc = await (await fetch(new URL("/v1/domain", base))).json();
  // ethers derives the EIP712Domain type from the domain object itself
  const { EIP712Domain, ...types } = doc.types;
  const domain = chainId === undefined ? doc.domain : { ...doc.domain, chainId };
  const bytes = new TextEncoder().encode(body);
  const message = {
    method,
    host: doc.host,
    path,
    bodyHash: sha256(bytes), // 0x-hex SHA-256 of the exact bytes sent
    nonce: hexlify(randomBytes(16)).slice(2),
    expires: Math.floor(Date.now() / 1000) + 60,
  };
  const wallet = new Wallet(key);
  const signature = await wallet.signTypedData(domain, types, message);
  const headers = {
    [doc.headers.account]: wallet.address,
    [doc.headers.nonce]: message.nonce,
    [doc.headers.expires]: String(message.expires),
    [doc.headers.signature]: signature,
    // optional: what was signed, so a service of another deployment can say what differs
    [doc.headers.domain]: `${domain.chainId}/${domain.verifyingContract}/${doc.host}`,
  };
  if (bytes.length) headers["Content-Type"] = "application/json";
  const response = await fetch(new URL(path, base), {
    method,
    headers,
    body: bytes.length ? bytes : undefined,
  });
  const text = await response.text();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return {
    status: response.status,
    body: parsed,
    account: wallet.address,
    digest: TypedDataEncoder.hash(domain, types, message),
    message,
  };
}

function verify(typedJson, signature) {
  const typed = JSON.parse(typedJson);
  const { EIP712Domain, ...types } = typed.types;
  return { account: verifyTypedData(typed.domain, types, typed.message, signature) };
}

const [mode, ...args] = process.argv.slice(2);
let out;
if (mode === "request") {
  const at = args.indexOf("--chain-id");
  const chainId = at >= 0 ? Number(args.splice(at, 2)[1]) : undefined;
  const [base, key, method, path, body = ""] = args;
  out = await request(base, key, method, path, body, chainId);
} else if (mode === "verify") {
  out = verify(args[0], args[1]);
} else {
  console.error("usage: consumer.mjs request|verify ...");
  process.exit(2);
}
console.log(JSON.stringify(out));
