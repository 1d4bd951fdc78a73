// "verify" links: fetch the proof check and show its outcome beside the link (the link itself opens the JSON).
document.addEventListener("click", async (event) => {
  const link = event.target.closest("a.verify");
  if (!link) return;
  event.preventDefault();
  const out = link.parentElement.querySelector(".verify-result");
  out.className = "verify-result";
  out.textContent = "checking…";
  try {
    const response = await fetch(link.href, { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || response.statusText);
    out.textContent = body.status.replace("_", " ");
    out.classList.add(body.status);
    out.title = body.checks.map((c) => `${c.name}: ${c.detail}`).join("\n");
  } catch (err) {
    out.textContent = "error";
    out.classList.add("error");
    out.title = String(err);
  }
});
