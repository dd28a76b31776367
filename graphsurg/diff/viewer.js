/* graphsurg diff viewer: lays the union graph out in layers, collapses runs of unchanged ops,
   and shows details, weight histograms and the numeric comparison. No network, no libraries. */
(function () {
  'use strict';

  var DATA = JSON.parse(document.getElementById('diff-data').textContent);
  var SVGNS = 'http://www.w3.org/2000/svg';
  var NODE_W = 170, NODE_H = 38, GAP_X = 26, GAP_Y = 54, RUN_MIN = 3, SWEEPS = 4, READABLE = 0.6;
  var LARGE = 400, CONTEXT = 2;  // hops of unchanged context kept around changes (1 above LARGE ops)
  var nodes = DATA.nodes, N = nodes.length;
  var preds = [], succs = [];
  for (var i = 0; i < N; i++) { preds.push([]); succs.push([]); }
  DATA.edges.forEach(function (e) { succs[e[0]].push(e[1]); preds[e[1]].push(e[0]); });

  var state = { collapse: true, expanded: {}, selected: -1, view: { x: 0, y: 0, k: 1 }, layout: null };
  var runs = computeRuns();
  var changedIds = [], isChanged = {};
  nodes.forEach(function (n, k) {
    if (n.status !== 'unchanged' && n.status !== 'io') { changedIds.push(k); isChanged[k] = true; }
  });
  var byName = indexNames();

  // ---- small DOM helpers (textContent only: names may hold anything) --------------------------
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    });
    return node;
  }
  function svg(tag, attrs) { var node = document.createElementNS(SVGNS, tag); setAttrs(node, attrs); return node; }
  function setAttrs(node, attrs) {
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') node.textContent = attrs[k];
      else if (k === 'onclick') node.addEventListener('click', attrs[k]);
      else node.setAttribute(k, attrs[k]);
    });
  }
  function fmt(x, digits) {
    if (x === null || x === undefined) return '-';
    if (typeof x !== 'number') return String(x);
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(digits || 3);
    return Number(x.toPrecision(digits || 4)).toString();
  }
  function pct(x) { return x === null || x === undefined ? '-' : (100 * x).toFixed(1) + '%'; }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function badge(status) { return el('span', { 'class': 'badge ' + status, style: 'background:' + DATA.colors[status] }, [status]); }

  // ---- folding unchanged ops ------------------------------------------------------------------
  // Every connected region of unchanged ops more than CONTEXT hops from a change folds into one box,
  // as a text diff keeps a few lines of context. Without changes only straight runs fold.
  function plain(i) { return nodes[i].status === 'unchanged'; }
  function link(u, v) { return plain(u) && plain(v) && succs[u].length === 1 && preds[v].length === 1 && succs[u][0] === v; }
  function computeRuns() {
    var changed = nodes.some(function (n) { return n.status !== 'unchanged' && n.status !== 'io'; });
    return changed ? foldRegions(N > LARGE ? 1 : CONTEXT) : foldChains();
  }
  function foldChains() {
    var runOf = new Array(N).fill(-1), list = [];
    for (var u = 0; u < N; u++) {
      if (!plain(u) || (preds[u].length === 1 && link(preds[u][0], u))) continue;
      var chain = [u], cur = u;
      while (succs[cur].length === 1 && link(cur, succs[cur][0])) { cur = succs[cur][0]; chain.push(cur); }
      if (chain.length >= RUN_MIN) {
        chain.forEach(function (m) { runOf[m] = list.length; });
        list.push(chain);
      }
    }
    return { of: runOf, list: list };
  }
  function foldRegions(context) {
    var near = new Array(N).fill(false), frontier = [];
    nodes.forEach(function (n, k) { if (!plain(k)) { near[k] = true; frontier.push(k); } });
    for (var hop = 0; hop < context; hop++) {
      var next = [];
      frontier.forEach(function (u) {
        preds[u].concat(succs[u]).forEach(function (v) { if (!near[v]) { near[v] = true; next.push(v); } });
      });
      frontier = next;
    }
    var runOf = new Array(N).fill(-1), list = [];
    for (var s0 = 0; s0 < N; s0++) {
      if (near[s0] || runOf[s0] >= 0) continue;
      var region = [s0], stack = [s0];
      runOf[s0] = list.length;
      while (stack.length) {
        var u = stack.pop();
        preds[u].concat(succs[u]).forEach(function (v) {
          if (!near[v] && runOf[v] < 0) { runOf[v] = list.length; region.push(v); stack.push(v); }
        });
      }
      if (region.length >= RUN_MIN) {
        region.sort(function (a, b) { return a - b; });
        list.push(region);
      } else {
        region.forEach(function (m) { runOf[m] = -1; });
      }
    }
    return { of: runOf, list: list };
  }
  function visibleId(i) {
    var r = runs.of[i];
    return (r >= 0 && state.collapse && !state.expanded[r]) ? N + r : i;
  }

  function indexNames() {
    var map = {};
    nodes.forEach(function (n, i) {
      [n.name, n.a, n.b].forEach(function (name) { if (name && !(name in map)) map[name] = i; });
    });
    return map;
  }

  // ---- layout: longest-path layers, barycentre ordering, aligned x ----------------------------
  function layout() {
    var ids = [], seen = {}, vEdges = [], edgeSeen = {};
    for (var i = 0; i < N; i++) { var v = visibleId(i); if (!seen[v]) { seen[v] = true; ids.push(v); } }
    var order = {}; ids.forEach(function (v, k) { order[v] = k; });
    var vp = {}, vs = {};
    ids.forEach(function (v) { vp[v] = []; vs[v] = []; });
    DATA.edges.forEach(function (e) {
      var s = visibleId(e[0]), d = visibleId(e[1]);
      if (s === d) return;
      var key = s + '>' + d;
      if (edgeSeen[key] !== undefined) { if (e[2] !== 0) vEdges[edgeSeen[key]][2] = e[2]; return; }
      edgeSeen[key] = vEdges.length;
      vEdges.push([s, d, e[2]]);
      if (order[s] < order[d]) { vs[s].push(d); vp[d].push(s); }  // back edges (cycles) do not shape layers
    });
    var layer = {};
    ids.forEach(function (v) {
      var l = 0;
      vp[v].forEach(function (p) { l = Math.max(l, layer[p] + 1); });
      layer[v] = l;
    });
    for (var k = ids.length - 1; k >= 0; k--) {  // sources sit just above their first reader
      var v2 = ids[k];
      if (vp[v2].length === 0 && vs[v2].length) {
        var m = Infinity;
        vs[v2].forEach(function (s) { m = Math.min(m, layer[s]); });
        layer[v2] = Math.max(0, m - 1);
      }
    }
    var layers = [];
    ids.forEach(function (v) { (layers[layer[v]] = layers[layer[v]] || []).push(v); });
    for (var L = 0; L < layers.length; L++) layers[L] = layers[L] || [];
    var pos = {};
    function index(list) { list.forEach(function (v, k) { pos[v] = k; }); }
    layers.forEach(index);
    function sweep(list, neighbours) {
      var bary = {};
      list.forEach(function (v) {
        var ns = neighbours[v], sum = 0;
        ns.forEach(function (n) { sum += pos[n]; });
        bary[v] = ns.length ? sum / ns.length : pos[v];
      });
      list.sort(function (a, b) { return bary[a] - bary[b] || order[a] - order[b]; });
      index(list);
    }
    for (var it = 0; it < SWEEPS; it++) {
      for (var d1 = 1; d1 < layers.length; d1++) sweep(layers[d1], vp);
      for (var u1 = layers.length - 2; u1 >= 0; u1--) sweep(layers[u1], vs);
    }
    var x = {}, y = {}, step = NODE_W + GAP_X;
    layers.forEach(function (list, L) {
      var want = list.map(function (v, k) {
        var ns = vp[v].filter(function (p) { return x[p] !== undefined; });
        if (!ns.length) return (k - (list.length - 1) / 2) * step;
        return ns.reduce(function (s, p) { return s + x[p]; }, 0) / ns.length;
      });
      var placed = [];
      want.forEach(function (w, k) { placed.push(k === 0 ? w : Math.max(w, placed[k - 1] + step)); });
      var shift = 0;
      want.forEach(function (w, k) { shift += (w - placed[k]) / want.length; });
      list.forEach(function (v, k) { x[v] = placed[k] + shift; y[v] = L * (NODE_H + GAP_Y); });
    });
    return { ids: ids, x: x, y: y, edges: vEdges };
  }

  // ---- drawing --------------------------------------------------------------------------------
  function draw() {
    state.layout = layout();
    var lay = state.layout, gEdges = clear(document.getElementById('edges')), gNodes = clear(document.getElementById('nodes'));
    var cls = ['edge', 'edge added', 'edge removed'];
    lay.edges.forEach(function (e) {
      var x1 = lay.x[e[0]], y1 = lay.y[e[0]] + NODE_H, x2 = lay.x[e[1]], y2 = lay.y[e[1]];
      var bend = Math.max(24, Math.abs(y2 - y1) / 2);
      if (y2 <= y1) bend = -bend;
      gEdges.appendChild(svg('path', {
        'class': cls[e[2]], 'marker-end': 'url(#' + ['arrow', 'arrow-added', 'arrow-removed'][e[2]] + ')',
        d: 'M' + x1 + ',' + y1 + ' C' + x1 + ',' + (y1 + bend) + ' ' + x2 + ',' + (y2 - bend) + ' ' + x2 + ',' + y2
      }));
    });
    lay.ids.forEach(function (v) { gNodes.appendChild(v >= N ? runNode(v - N, lay) : opNode(v, lay)); });
    var visible = lay.ids.filter(function (v) { return v < N; }).length, folds = lay.ids.length - visible;
    document.getElementById('status-line').textContent = N + ' ops; ' + visible + ' drawn' +
      (folds ? ', ' + (N - visible) + ' unchanged in ' + folds + ' folds (click a fold to open it)' : '');
  }

  function opNode(i, lay) {
    var n = nodes[i];
    var g = svg('g', { 'class': 'node ' + n.status + (i === state.selected ? ' selected' : ''), 'data-id': i,
      'data-status': n.status, transform: 'translate(' + (lay.x[i] - NODE_W / 2) + ',' + lay.y[i] + ')' });
    g.appendChild(svg('rect', { width: NODE_W, height: NODE_H, rx: n.io ? 19 : 5 }));
    g.appendChild(svg('text', { 'class': 'type', x: 8, y: 15, text: clip(n.io ? n.io + ' ' + n.name : n.type, 24) }));
    g.appendChild(svg('text', { x: 8, y: 30, text: clip(n.io ? n.attrs.type : n.name, 28) }));
    var title = svg('title', {}); title.textContent = (n.io ? n.io : n.type) + ' ' + n.name + ' (' + n.status + ')';
    g.appendChild(title);
    g.addEventListener('click', function (ev) { ev.stopPropagation(); select(i, false); });
    return g;
  }

  function runNode(r, lay) {
    var v = N + r, members = runs.list[r];
    var g = svg('g', { 'class': 'node run', 'data-run': r, transform: 'translate(' + (lay.x[v] - NODE_W / 2) + ',' + lay.y[v] + ')' });
    g.appendChild(svg('rect', { width: NODE_W, height: NODE_H, rx: 5 }));
    g.appendChild(svg('text', { 'class': 'type', x: 8, y: 15, text: '\u22ef ' + members.length + ' unchanged ops' }));
    g.appendChild(svg('text', { x: 8, y: 30, text: clip(nodes[members[0]].type + ' \u2192 \u2026 \u2192 ' + nodes[members[members.length - 1]].type, 28) }));
    g.addEventListener('click', function (ev) { ev.stopPropagation(); state.expanded[r] = true; draw(); });
    return g;
  }

  function clip(text, n) { text = String(text); return text.length > n ? text.slice(0, n - 1) + '\u2026' : text; }

  // ---- pan and zoom ----------------------------------------------------------------------------
  var svgRoot = document.getElementById('graph');
  function applyView() {
    var v = state.view;
    document.getElementById('viewport').setAttribute('transform', 'translate(' + v.x + ',' + v.y + ') scale(' + v.k + ')');
  }
  function fit(onlyChanges) {
    var lay = state.layout, minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    var pick = lay.ids.filter(function (v) { return !onlyChanges || isChanged[v] === true; });
    if (!pick.length) pick = lay.ids;
    pick.forEach(function (v) {
      minX = Math.min(minX, lay.x[v] - NODE_W / 2); maxX = Math.max(maxX, lay.x[v] + NODE_W / 2);
      minY = Math.min(minY, lay.y[v]); maxY = Math.max(maxY, lay.y[v] + NODE_H);
    });
    if (!isFinite(minX)) return;
    var box = svgRoot.getBoundingClientRect(), pad = onlyChanges ? 3 * NODE_H : 30;
    var k = Math.min((box.width - 2 * pad) / (maxX - minX), (box.height - 2 * pad) / (maxY - minY), 1.2);
    k = Math.max(k, 0.05);
    state.view = { k: k, x: (box.width - k * (maxX + minX)) / 2, y: (box.height - k * (maxY + minY)) / 2 };
    applyView();
  }
  function initialView() {
    // The whole graph when it is readable at that scale, else the changes, else the first change.
    fit(false);
    if (state.view.k >= READABLE || !changedIds.length) return;
    fit(true);
    if (state.view.k < READABLE) centreOn(changedIds[0]);
  }
  function centreOn(v) {
    var box = svgRoot.getBoundingClientRect(), k = Math.max(state.view.k, 0.8);
    state.view = { k: k, x: box.width / 2 - k * state.layout.x[v], y: box.height / 2 - k * (state.layout.y[v] + NODE_H / 2) };
    applyView();
  }
  svgRoot.addEventListener('wheel', function (ev) {
    ev.preventDefault();
    var box = svgRoot.getBoundingClientRect(), v = state.view;
    var factor = Math.exp(-ev.deltaY * 0.0015), k = Math.min(4, Math.max(0.03, v.k * factor));
    var px = ev.clientX - box.left, py = ev.clientY - box.top;
    state.view = { k: k, x: px - (px - v.x) * k / v.k, y: py - (py - v.y) * k / v.k };
    applyView();
  }, { passive: false });
  var drag = null;
  svgRoot.addEventListener('mousedown', function (ev) {
    drag = { x: ev.clientX, y: ev.clientY, vx: state.view.x, vy: state.view.y };
    svgRoot.classList.add('panning');
  });
  window.addEventListener('mousemove', function (ev) {
    if (!drag) return;
    state.view.x = drag.vx + ev.clientX - drag.x; state.view.y = drag.vy + ev.clientY - drag.y;
    applyView();
  });
  window.addEventListener('mouseup', function () { drag = null; svgRoot.classList.remove('panning'); });

  // ---- selection and details --------------------------------------------------------------------
  function select(i, centre) {
    var r = runs.of[i];
    var redraw = r >= 0 && state.collapse && !state.expanded[r];
    if (redraw) state.expanded[r] = true;
    state.selected = i;
    if (redraw) draw();
    Array.prototype.forEach.call(document.querySelectorAll('.node.selected'), function (n) { n.classList.remove('selected'); });
    var g = document.querySelector('.node[data-id="' + i + '"]');
    if (g) g.classList.add('selected');
    if (centre) centreOn(i);
    showDetails(i);
    openTab('details');
  }

  function showDetails(i) {
    var n = nodes[i], box = clear(document.getElementById('tab-details'));
    box.appendChild(el('h3', {}, [badge(n.status), n.io ? n.io + ' ' + n.name : n.type + ' ' + n.name]));
    var rows = [];
    if (n.a && n.b && n.a !== n.b) rows.push(['name in a', n.a], ['name in b', n.b]);
    else if (n.a || n.b) rows.push(['name', n.a || n.b]);
    if (!n.io) rows.push(['domain', n.domain]);
    box.appendChild(table(rows));
    if (n.changes.length) {
      box.appendChild(el('h3', {}, ['What changed']));
      box.appendChild(table(n.changes.map(function (c) {
        var what = c.what === 'attribute' ? 'attribute ' + c.name : c.what === 'input' ? 'input ' + c.port : c.what;
        return [what, fmtValue(c.before) + '  \u2192  ' + fmtValue(c.after)];
      })));
    }
    var attrKeys = Object.keys(n.attrs || {});
    if (attrKeys.length && !n.io) {
      box.appendChild(el('h3', {}, ['Attributes']));
      box.appendChild(table(attrKeys.map(function (k) { return [k, fmtValue(n.attrs[k])]; })));
    }
    if (!n.io) {
      box.appendChild(el('h3', {}, ['Inputs / outputs' + (n.status === 'removed' ? ' (in a)' : '')]));
      box.appendChild(table([['inputs', n.inputs.join(', ') || '-'], ['outputs', n.outputs.join(', ') || '-']], true));
    }
    if (n.weights.length) {
      box.appendChild(el('h3', {}, ['Weights']));
      n.weights.forEach(function (w) { box.appendChild(weightCard(DATA.weights[w], false)); });
    }
    var sub = (DATA.subgraphs || []).filter(function (s) { return s.op === n.name; });
    sub.forEach(function (s) {
      box.appendChild(el('h3', {}, ['Subgraph ' + s.attribute]));
      var list = el('ol', { 'class': 'edits' }, s.graph.edits.map(function (e) { return el('li', {}, [e.summary]); }));
      box.appendChild(list);
    });
  }

  function fmtValue(v) {
    if (v === null || v === undefined) return '(none)';
    if (Array.isArray(v)) return '[' + v.map(fmtValue).join(', ') + ']';
    return typeof v === 'number' ? fmt(v, 6) : String(v);
  }

  function table(rows, mono) {
    return el('table', {}, rows.map(function (r) {
      return el('tr', {}, [el('th', {}, [r[0]]), el('td', { 'class': mono ? 'mono' : '' }, [r[1]])]);
    }));
  }

  // ---- weights ---------------------------------------------------------------------------------
  function weightCard(w, clickable) {
    var name = w.before && w.after && w.before !== w.after ? w.before + ' \u2192 ' + w.after : (w.before || w.after);
    var card = el('div', { 'class': 'weight-card' }, [
      el('div', {}, [badge(w.status), el('span', { 'class': 'mono' }, [name])]),
      el('div', { 'class': 'muted' }, [shapeText(w) + '   |dW|/|W| ' + fmt(w.rel_change) + '   sparsity ' +
        pct(w.sparsity[0]) + ' \u2192 ' + pct(w.sparsity[1]) + (w.quantized[1] ? '   quantized' : '')])
    ]);
    if (w.histogram) card.appendChild(histogram(w.histogram));
    if (clickable && w.users.length) {
      card.addEventListener('click', function () {
        var id = byName[w.users[0].replace(/:\d+$/, '')];
        if (id !== undefined) select(id, true);
      });
    }
    return card;
  }

  function shapeText(w) {
    var parts = [0, 1].map(function (k) { return w.dtype[k] ? w.dtype[k] + '[' + w.shape[k].join(',') + ']' : null; });
    return parts[0] && parts[1] && parts[0] !== parts[1] ? parts[0] + ' \u2192 ' + parts[1] : (parts[0] || parts[1]);
  }

  function histogram(h) {
    var W = 360, H = 70, box = svg('svg', { 'class': 'hist', width: W, height: h.delta ? 2 * H + 30 : H + 14 });
    bars(box, [h.before, h.after], ['before', 'after'], 0, W, H, h.edges);
    if (h.delta) bars(box, [h.delta.counts], ['delta'], H + 16, W, H, h.delta.edges, 'change');
    return box;
  }

  function bars(box, series, classes, top, W, H, edges, label) {
    var peak = 1;
    series.forEach(function (s) { (s || []).forEach(function (c) { peak = Math.max(peak, c); }); });
    series.forEach(function (s, k) {
      if (!s) return;
      var bw = W / s.length;
      s.forEach(function (c, j) {
        if (!c) return;
        var h = Math.max(1, (H - 12) * c / peak);
        box.appendChild(svg('rect', { 'class': classes[k], x: j * bw, y: top + H - 12 - h, width: Math.max(1, bw - 1), height: h }));
      });
    });
    box.appendChild(svg('text', { x: 0, y: top + H, text: fmt(edges[0], 3) }));
    box.appendChild(svg('text', { x: W, y: top + H, 'text-anchor': 'end', text: fmt(edges[1], 3) }));
    box.appendChild(svg('text', { x: W / 2, y: top + H, 'text-anchor': 'middle',
      text: label || 'values: before (blue) / after (orange)' }));
  }

  // ---- summary, weights and numeric tabs ----------------------------------------------------------
  function fillSummary() {
    var s = document.getElementById('summary');
    s.textContent = DATA.summary;
    s.className = DATA.identical ? 'identical' : 'differs';
    document.getElementById('files').textContent = '--- ' + (DATA.a.path || 'a') + ' (' + DATA.a.ops + ' ops)   +++ ' +
      (DATA.b.path || 'b') + ' (' + DATA.b.ops + ' ops)';
    var box = document.getElementById('tab-summary');
    box.appendChild(el('h3', {}, ['Edits (' + DATA.edits.length + ')']));
    if (!DATA.edits.length) box.appendChild(el('p', { 'class': 'muted' }, ['No structural edits.']));
    box.appendChild(el('ol', { 'class': 'edits' }, DATA.edits.map(function (e) {
      return el('li', { onclick: function () { focusEdit(e); } }, [e.summary]);
    })));
    var counts = DATA.counts;
    box.appendChild(el('h3', {}, ['Counts']));
    box.appendChild(table([
      ['ops', counts.ops_matched + ' matched, ' + counts.ops_added + ' added, ' + counts.ops_removed + ' removed, ' + counts.ops_changed + ' changed'],
      ['weights', counts.weights_changed + ' changed, ' + counts.weights_added + ' added, ' + counts.weights_removed + ' removed'],
      ['renamed', counts.ops_renamed + ' ops, ' + counts.values_renamed + ' values (not differences)']
    ]));
    var io = [];
    ['inputs', 'outputs'].forEach(function (role) {
      var r = DATA.io[role];
      r.added.forEach(function (e) { io.push(['+ ' + role.slice(0, -1), e.name + ' ' + e.dtype + JSON.stringify(e.shape)]); });
      r.removed.forEach(function (e) { io.push(['- ' + role.slice(0, -1), e.name + ' ' + e.dtype + JSON.stringify(e.shape)]); });
      r.changed.forEach(function (e) { io.push(['~ ' + role.slice(0, -1), e.before.name + ' \u2192 ' + e.after.name + ' (' + e.changes.join(', ') + ')']); });
    });
    if (io.length) { box.appendChild(el('h3', {}, ['Inputs and outputs'])); box.appendChild(table(io)); }
    if (DATA.model.length) {
      box.appendChild(el('h3', {}, ['Model']));
      box.appendChild(table(DATA.model.map(function (m) { return [m.field, fmtValue(m.before) + '  \u2192  ' + fmtValue(m.after)]; })));
    }
  }

  function focusEdit(e) {
    var names = e.changed.concat(e.added, e.removed, e.before);
    for (var k = 0; k < names.length; k++) {
      if (byName[names[k]] !== undefined) { select(byName[names[k]], true); return; }
    }
  }

  function fillWeights() {
    var box = document.getElementById('tab-weights');
    if (!DATA.weights.length) { box.appendChild(el('p', { 'class': 'muted' }, ['No weight changed.'])); return; }
    var sorted = DATA.weights.slice().sort(function (a, b) { return (b.rel_change || 0) - (a.rel_change || 0); });
    box.appendChild(el('p', { 'class': 'muted' }, [DATA.weights.length + ' weights differ; largest relative change first. Click one to find its op.']));
    sorted.forEach(function (w) { box.appendChild(weightCard(w, true)); });
  }

  function fillNumeric() {
    var box = document.getElementById('tab-numeric'), num = DATA.numeric;
    if (!num) { box.appendChild(el('p', { 'class': 'muted' }, ['Run graphsurg diff with --data to compare outputs and tensors numerically.'])); return; }
    box.appendChild(el('p', {}, [num.samples + ' samples of ' + num.data + '; outputs ' +
      (num.within_tolerance ? 'within' : 'beyond') + ' tolerance ' + num.tolerance]));
    if (num.accuracy) {
      box.appendChild(el('p', {}, ['accuracy: ' + fmt(num.accuracy.a) + ' \u2192 ' + fmt(num.accuracy.b)]));
    }
    box.appendChild(el('h3', {}, ['Outputs']));
    box.appendChild(numTable(num.outputs, ['output', 'SQNR dB', 'max|diff|', 'agree'], function (r) {
      return [r.name, sqnr(r), fmt(r.max_abs_diff), r.agreement === null ? '-' : pct(r.agreement)];
    }));
    var rows = num.tensors.slice().sort(function (a, b) { return sqnrKey(a) - sqnrKey(b); });
    box.appendChild(el('h3', {}, ['Matched tensors (' + rows.length + '), lowest SQNR first']));
    box.appendChild(numTable(rows, ['tensor', 'op', 'SQNR dB', 'max|diff|'], function (r) {
      return [r.after_name, r.op_type || '-', sqnr(r), fmt(r.max_abs_diff)];
    }, function (r) { return byName[r.op]; }));
  }

  function sqnr(r) { return r.sqnr_infinite ? '\u221e' : fmt(r.sqnr_db); }
  function sqnrKey(r) { return r.sqnr_infinite ? Infinity : (r.sqnr_db === null ? -Infinity : r.sqnr_db); }

  function numTable(rows, head, cells, target) {
    var t = el('table', {}, [el('tr', {}, head.map(function (h) { return el('th', {}, [h]); }))]);
    rows.forEach(function (r) {
      var id = target ? target(r) : undefined;
      var tr = el('tr', { 'class': id !== undefined ? 'clickable' : '' }, cells(r).map(function (c, k) {
        return el('td', { 'class': k === 0 ? 'mono' : 'num' }, [c]);
      }));
      if (id !== undefined) tr.addEventListener('click', function () { select(id, true); });
      t.appendChild(tr);
    });
    return t;
  }

  // ---- tabs, search, toolbar -----------------------------------------------------------------------
  function openTab(name) {
    Array.prototype.forEach.call(document.querySelectorAll('#tabs button'), function (b) {
      b.classList.toggle('active', b.getAttribute('data-tab') === name);
    });
    Array.prototype.forEach.call(document.querySelectorAll('.tab'), function (t) {
      t.classList.toggle('active', t.id === 'tab-' + name);
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll('#tabs button'), function (b) {
    b.addEventListener('click', function () { openTab(b.getAttribute('data-tab')); });
  });

  var search = document.getElementById('search'), results = document.getElementById('search-results');
  search.addEventListener('input', function () {
    var q = search.value.trim().toLowerCase();
    clear(results);
    Array.prototype.forEach.call(document.querySelectorAll('.node.hit'), function (n) { n.classList.remove('hit'); });
    if (!q) { results.hidden = true; return; }
    var hits = [];
    for (var k = 0; k < N && hits.length < 200; k++) {
      var n = nodes[k];
      if ([n.name, n.a, n.b, n.type].some(function (s) { return s && s.toLowerCase().indexOf(q) >= 0; })) hits.push(k);
    }
    hits.slice(0, 50).forEach(function (k) {
      results.appendChild(el('li', { onclick: function () { results.hidden = true; select(k, true); } },
        [badge(nodes[k].status), nodes[k].type + ' ' + nodes[k].name]));
    });
    if (hits.length > 50) results.appendChild(el('li', { 'class': 'muted' }, [(hits.length >= 200 ? '200+' : hits.length) + ' matches; refine the search']));
    hits.forEach(function (k) { var g = document.querySelector('.node[data-id="' + k + '"]'); if (g) g.classList.add('hit'); });
    results.hidden = false;
  });
  search.addEventListener('keydown', function (ev) {
    if (ev.key === 'Enter' && results.firstChild && results.firstChild.click) results.firstChild.click();
    if (ev.key === 'Escape') { results.hidden = true; }
  });

  document.getElementById('collapse').addEventListener('change', function (ev) {
    state.collapse = ev.target.checked; state.expanded = {}; draw(); fit(false);
  });
  document.getElementById('fit').addEventListener('click', function () { fit(false); });
  function nextChange() {
    if (!changedIds.length) return;
    var after = changedIds.filter(function (k) { return k > state.selected; });
    select(after.length ? after[0] : changedIds[0], true);
  }
  document.getElementById('next-change').addEventListener('click', nextChange);
  document.addEventListener('keydown', function (ev) { if (ev.key === 'n' && ev.target === document.body) nextChange(); });

  function fillLegend() {
    var legend = document.getElementById('legend');
    ['added', 'removed', 'changed', 'weights', 'unchanged'].forEach(function (s) {
      legend.appendChild(el('span', {}, [el('span', { 'class': 'swatch', style: 'background:' + DATA.colors[s] }),
        s === 'weights' ? 'weights changed' : s]));
    });
  }

  fillLegend();
  fillSummary();
  fillWeights();
  fillNumeric();
  draw();
  initialView();
  window.addEventListener('resize', function () { fit(false); });
  window.__diffReady = true;  // the HTML test waits for this
})();
