// The attribution-graph viewer: one self-contained page, no network. Reads the graph (circuit-tracer's
// JSON schema) and optional feature dashboards from the page's own <script type="application/json">
// blocks, lays nodes out by layer (rows) and position (columns), and on click shows a node's
// strongest inputs and outputs and its dashboard. Shift-click selects nodes; "Group" makes a
// supernode of the selection; "Export" writes the grouping as circuit-tracer's qParams.supernodes.
// With the URL hash #selftest the page exercises itself and writes what it saw onto <body>.
(function () {
  "use strict";
  var errors = [];
  var body = document.body;
  function report() { body.setAttribute("data-ik-errors", JSON.stringify(errors)); }
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); report(); });
  report();

  var data = JSON.parse(document.getElementById("ik-graph").textContent);
  var dashboards = JSON.parse(document.getElementById("ik-dashboards").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var nodes = data.nodes, links = data.links;
  var byId = {}, selected = {}, groups = [];
  nodes.forEach(function (n) { n.inputs = []; n.outputs = []; byId[n.node_id] = n; });
  links.forEach(function (l) {
    var s = byId[l.source], t = byId[l.target];
    if (!s || !t) return;
    l.s = s; l.t = t;
    s.outputs.push(l); t.inputs.push(l);
  });
  function byWeight(a, b) { return Math.abs(b.weight) - Math.abs(a.weight); }
  nodes.forEach(function (n) { n.inputs.sort(byWeight); n.outputs.sort(byWeight); });

  // ------------------------------------------------------------------ layout
  var nLayers = 0;
  nodes.forEach(function (n) { if (n.layer !== "E" && n.feature_type !== "logit") nLayers = Math.max(nLayers, +n.layer + 1); });
  function row(n) { return n.layer === "E" ? 0 : (n.feature_type === "logit" ? nLayers + 1 : +n.layer + 1); }
  var tokens = data.metadata.prompt_tokens, cells = {}, widest = {};
  nodes.forEach(function (n) {
    var key = row(n) + ":" + n.ctx_idx;
    (cells[key] = cells[key] || []).push(n);
    widest[n.ctx_idx] = Math.max(widest[n.ctx_idx] || 1, cells[key].length);
  });
  var colX = [], x = 70, step = 22, rowH = 46;
  for (var p = 0; p < tokens.length; p++) { colX.push(x); x += Math.max(70, step * Math.min(widest[p] || 1, 12)); }
  var width = x + 20, height = rowH * (nLayers + 2) + 90;
  Object.keys(cells).forEach(function (key) {
    var members = cells[key], pos = +key.split(":")[1], span = Math.max(70, step * Math.min(widest[pos] || 1, 12)) - 16;
    members.forEach(function (n, k) {
      var perRow = Math.max(1, Math.floor(span / step)), col = k % perRow, sub = Math.floor(k / perRow);
      n.x = colX[pos] + 8 + col * step;
      n.y = height - 70 - row(n) * rowH - sub * 7;
    });
  });

  // ------------------------------------------------------------------ drawing
  var svg = document.getElementById("ik-svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  function el(name, attrs, parent) {
    var e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    (parent || svg).appendChild(e);
    return e;
  }
  for (var r = 0; r <= nLayers + 1; r++) {
    var label = r === 0 ? "Emb" : (r === nLayers + 1 ? "Logit" : "L" + (r - 1));
    el("text", {x: 8, y: height - 66 - r * rowH, class: "axis"}).textContent = label;
  }
  tokens.forEach(function (t, i) {
    var text = el("text", {x: colX[i], y: height - 44, class: "axis token",
      transform: "rotate(30 " + colX[i] + " " + (height - 44) + ")"});
    text.textContent = t;
  });
  var maxW = 0;
  links.forEach(function (l) { maxW = Math.max(maxW, Math.abs(l.weight)); });
  var edgeLayer = el("g", {id: "ik-edges"}), nodeLayer = el("g", {id: "ik-nodes"});
  links.forEach(function (l) {
    if (!l.s) return;
    l.el = el("line", {x1: l.s.x, y1: l.s.y, x2: l.t.x, y2: l.t.y,
      class: "edge " + (l.weight > 0 ? "pos" : "neg"),
      "stroke-opacity": (0.08 + 0.6 * Math.abs(l.weight) / (maxW || 1)).toFixed(3)}, edgeLayer);
  });
  nodes.forEach(function (n) {
    var kind = n.feature_type === "logit" ? "logit" : n.feature_type === "embedding" ? "embedding" :
      (n.feature_type.indexOf("error") >= 0 ? "error" : "feature");
    var shape;
    if (kind === "feature") shape = el("circle", {cx: n.x, cy: n.y, r: 6}, nodeLayer);
    else if (kind === "error") shape = el("path", {d: "M" + n.x + " " + (n.y - 7) + " l7 7 l-7 7 l-7 -7 z"}, nodeLayer);
    else shape = el("rect", {x: n.x - 6, y: n.y - 6, width: 12, height: 12}, nodeLayer);
    shape.setAttribute("class", "node " + kind);
    shape.setAttribute("data-id", n.node_id);
    el("title", {}, shape).textContent = (n.clerp || n.node_id) + " (" + n.feature_type + ")";
    n.el = shape;
    shape.addEventListener("click", function (e) { e.shiftKey ? toggle(n) : show(n); });
  });

  // ------------------------------------------------------------------ the panel
  function fmt(v) { return v === null || v === undefined ? "-" : (+v).toPrecision(4); }
  function listRows(items, other) {
    if (!items.length) return "<p class=\"none\">none</p>";
    return "<table>" + items.slice(0, 10).map(function (l) {
      var m = l[other];
      return "<tr><td class=\"id\" data-go=\"" + m.node_id + "\">" + escapeHtml(m.clerp || m.node_id) +
        "</td><td class=\"w " + (l.weight > 0 ? "pos" : "neg") + "\">" + fmt(l.weight) + "</td></tr>";
    }).join("") + "</table>";
  }
  function escapeHtml(s) {
    return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"}[c]; });
  }
  var current = null;
  function show(n) {
    if (current) current.el.classList.remove("current");
    current = n;
    n.el.classList.add("current");
    links.forEach(function (l) { if (l.el) l.el.classList.toggle("lit", l.s === n || l.t === n); });
    var info = document.getElementById("ik-node");
    var dash = dashboards[n.node_id] || dashboards[n.ik_layer + "/" + n.ik_unit];
    info.innerHTML =
      "<h2>" + escapeHtml(n.clerp || n.node_id) + "</h2>" +
      "<p class=\"meta\">" + escapeHtml(n.node_id) + " · " + escapeHtml(n.feature_type) + " · " + (n.feature_type === "logit" ? "output" : n.layer === "E" ? "embedding" : "layer " + escapeHtml(n.layer)) +
      " · position " + n.ctx_idx + " (" + escapeHtml(tokens[n.ctx_idx] || "") + ")</p>" +
      "<p class=\"meta\">activation " + fmt(n.activation) + " · influence " + fmt(n.ik_influence) +
      " · pre-activation " + fmt(n.ik_pre_activation) + "</p>" +
      "<h3>Strongest inputs</h3><div id=\"ik-inputs\">" + listRows(n.inputs, "s") + "</div>" +
      "<h3>Strongest outputs</h3><div id=\"ik-outputs\">" + listRows(n.outputs, "t") + "</div>" +
      (dash ? "<h3>Feature dashboard</h3><iframe id=\"ik-dashboard\" sandbox=\"allow-scripts\"></iframe>" : "");
    if (dash) document.getElementById("ik-dashboard").setAttribute("srcdoc", dash);
    info.querySelectorAll("[data-go]").forEach(function (cell) {
      cell.addEventListener("click", function () { show(byId[cell.getAttribute("data-go")]); });
    });
    document.getElementById("ik-empty").hidden = true;
    info.hidden = false;
  }

  // ------------------------------------------------------------------ supernodes
  function toggle(n) {
    if (selected[n.node_id]) delete selected[n.node_id]; else selected[n.node_id] = n;
    n.el.classList.toggle("selected", !!selected[n.node_id]);
    document.getElementById("ik-selection").textContent = Object.keys(selected).length + " selected";
  }
  function group() {
    var ids = Object.keys(selected);
    if (!ids.length) return;
    var input = document.getElementById("ik-group-name");
    groups.push([input.value || "group " + (groups.length + 1)].concat(ids));
    input.value = "";
    ids.forEach(function (id) { toggle(byId[id]); byId[id].el.classList.add("grouped"); });
    drawGroups();
  }
  function drawGroups() {
    var list = document.getElementById("ik-groups");
    list.innerHTML = "";
    groups.forEach(function (g, i) {
      var item = document.createElement("li");
      item.textContent = g[0] + " (" + (g.length - 1) + " nodes) ";
      var drop = document.createElement("button");
      drop.textContent = "ungroup";
      drop.addEventListener("click", function () { groups.splice(i, 1); drawGroups(); });
      item.appendChild(drop);
      list.appendChild(item);
    });
  }
  function exportGroups() {
    var out = {supernodes: groups, pinnedIds: [], slug: data.metadata.slug};
    var text = JSON.stringify(out, null, 1);
    document.getElementById("ik-export").value = text;
    var link = document.getElementById("ik-download");
    link.setAttribute("href", "data:application/json;charset=utf-8," + encodeURIComponent(text));
    return text;
  }
  document.getElementById("ik-group").addEventListener("click", group);
  document.getElementById("ik-export-btn").addEventListener("click", exportGroups);
  document.getElementById("ik-summary").textContent = nodes.length + " nodes · " + links.length + " edges · " +
    (data.metadata.prompt || "");
  body.setAttribute("data-ik-nodes", String(nodes.length));
  body.setAttribute("data-ik-links", String(links.filter(function (l) { return l.el; }).length));

  // ------------------------------------------------------------------ self-test
  if (location.hash === "#selftest") {
    var click = function (n, shift) {
      n.el.dispatchEvent(new MouseEvent("click", {bubbles: true, shiftKey: !!shift}));
    };
    var ranked = nodes.filter(function (n) { return n.inputs.length; })
      .sort(function (a, b) { return (b.ik_influence || 0) - (a.ik_influence || 0); });
    var target = ranked[0] || nodes[0];
    click(target);
    var panel = document.getElementById("ik-node");
    body.setAttribute("data-ik-clicked", target.node_id);
    body.setAttribute("data-ik-panel", !panel.hidden && panel.textContent.indexOf(target.node_id) >= 0 ? "filled" : "empty");
    body.setAttribute("data-ik-inputs", String(panel.querySelectorAll("#ik-inputs tr").length));
    body.setAttribute("data-ik-dashboard", document.getElementById("ik-dashboard") ? "shown" : "none");
    var pair = nodes.filter(function (n) { return n.feature_type !== "logit"; }).slice(0, 2);
    pair.forEach(function (n) { click(n, true); });
    document.getElementById("ik-group-name").value = "selftest";
    document.getElementById("ik-group").click();
    document.getElementById("ik-export-btn").click();
    body.setAttribute("data-ik-export", document.getElementById("ik-export").value.replace(/\s+/g, ""));
  }
  report();
})();
