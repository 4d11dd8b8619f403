"""The page around the interactive map: controls, styles and the script that draws the map
with plotly.js from the data :func:`jaxmap.analysis.plots.map_html` embeds.

The script reads one JSON object (``#map-data``):

    names        [K] model names as shown (short display names)
    references   [K] full model names (the search matches these too)
    label_points whether every point's name is written beside it (small maps)
    x, y         [K] map coordinates
    hover        [K] hover text of each model (markup, every string in it escaped)
    colorings    {column: {kind: "category", labels: [K], colors: {label: hex}, order: [...]}
                  | {kind: "numeric", values: [K] (null where missing), log: bool}}
    color_by     the column coloured first (or null)
    paths        [[i, j, ...], ...] trajectories, in order
    neighbors    [K] lists of [index, KL] nearest first (empty without a KL matrix)
    kl_unit      unit of the KL values
    axis_label   e.g. "t-SNE"
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 12px; color: #222; }}
#controls {{ display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin-bottom: 6px; }}
#controls label {{ font-size: 13px; }}
#layout {{ display: flex; gap: 12px; align-items: flex-start; }}
#map {{ flex: 1 1 auto; min-width: 400px; height: 78vh; }}
#side {{ width: 300px; font-size: 13px; }}
#side h4 {{ margin: 4px 0; }}
#neighbors li {{ margin: 2px 0; cursor: pointer; }}
#matches {{ color: #666; font-size: 12px; }}
</style></head><body>
<h3 style="margin: 4px 0 8px 0">{title}</h3>
<div id="controls">
  <label>Colour by <select id="color-by"></select></label>
  <label>Find model <input id="search" type="search" placeholder="part of a name" size="28"></label>
  <span id="matches"></span>
  <label id="paths-control"><input id="show-paths" type="checkbox" checked> trajectories</label>
</div>
<div id="layout">
  <div id="map"></div>
  <div id="side"><h4 id="picked">Click a model to list its nearest neighbours.</h4>
    <ol id="neighbors"></ol></div>
</div>
<script type="application/json" id="map-data">{data}</script>
<script>{plotly}</script>
<script>{script}</script>
</body></html>
"""

SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById('map-data').textContent);
  const K = data.names.length;
  const mapDiv = document.getElementById('map');
  const select = document.getElementById('color-by');
  const search = document.getElementById('search');
  const showPaths = document.getElementById('show-paths');
  const GREY = '#b0b0b0';
  let picked = null;
  // plotly reads trace names, point text and titles as markup (an <a href> in a legend entry
  // becomes a live link): every string from the data is escaped before plotly sees it. With
  // "<" escaped no tag can form, so quotes stay as they are (plotly would show &quot; as
  // typed). The side panel and the menu set textContent, which needs no escaping.
  const ENTITIES = {'&': '&amp;', '<': '&lt;', '>': '&gt;'};
  const esc = text => String(text).replace(/[&<>]/g, c => ENTITIES[c]);

  const columns = Object.keys(data.colorings);
  select.add(new Option('(none)', ''));
  for (const column of columns) select.add(new Option(column, column));
  select.value = data.color_by && data.colorings[data.color_by] ? data.color_by : '';
  if (!data.paths.length) document.getElementById('paths-control').style.display = 'none';

  // A name beside a point near the left or right edge reaches inwards, so that it stays on
  // the page; plotly does not move names apart, so very close points may share their space
  // until zoomed.
  const xLow = Math.min(...data.x), xSpan = Math.max(...data.x) - xLow || 1;
  const side = i => (data.x[i] - xLow) / xSpan;
  const namePosition = i => side(i) < 0.25 ? 'top right' : side(i) > 0.75 ? 'top left' : 'top center';

  function pointTrace(indices, name, marker, showlegend) {
    return {
      type: 'scatter', mode: data.label_points ? 'markers+text' : 'markers', name: esc(name),
      showlegend: showlegend, x: indices.map(i => data.x[i]), y: indices.map(i => data.y[i]),
      text: indices.map(i => esc(data.names[i])), textposition: indices.map(namePosition),
      textfont: {size: 11, color: '#444'}, cliponaxis: false,
      customdata: indices, hovertext: indices.map(i => data.hover[i]), hoverinfo: 'text',
      marker: Object.assign({size: K > 400 ? 6 : 10, line: {color: 'white', width: 0.6}}, marker),
      meta: 'points',
    };
  }

  function pointTraces(column) {
    const all = [...Array(K).keys()];
    if (!column) return [pointTrace(all, 'models', {color: '#1f77b4'}, false)];
    const coloring = data.colorings[column];
    if (coloring.kind === 'category') {
      return coloring.order.map(label => pointTrace(
        all.filter(i => coloring.labels[i] === label), label, {color: coloring.colors[label]}, true
      )).filter(trace => trace.x.length);
    }
    const present = all.filter(i => coloring.values[i] !== null);
    const missing = all.filter(i => coloring.values[i] === null);
    const values = present.map(i => coloring.log ? Math.log10(coloring.values[i]) : coloring.values[i]);
    const traces = [pointTrace(present, column, {
      color: values, colorscale: 'Viridis', showscale: true,
      colorbar: {title: {text: esc(coloring.log ? 'log10 ' + column : column)}},
    }, false)];
    if (missing.length) traces.push(pointTrace(missing, '(missing)', {color: GREY}, true));
    return traces;
  }

  function pathTrace() {
    const x = [], y = [];
    for (const path of data.paths) {
      for (const i of path) { x.push(data.x[i]); y.push(data.y[i]); }
      x.push(null); y.push(null);
    }
    return {type: 'scatter', mode: 'lines', name: 'trajectories', x: x, y: y,
            hoverinfo: 'skip', line: {color: 'rgba(90,90,90,0.55)', width: 1.4},
            visible: showPaths.checked, meta: 'paths'};
  }

  function ringTrace(indices, name, color, labelled, size) {
    // Where every point is named already, a ring's name would be written twice.
    const named = labelled && !data.label_points;
    return {type: 'scatter', mode: named ? 'markers+text' : 'markers', name: esc(name),
            x: indices.map(i => data.x[i]), y: indices.map(i => data.y[i]),
            text: indices.map(i => esc(data.names[i])), textposition: 'top center',
            customdata: indices, hovertext: indices.map(i => data.hover[i]), hoverinfo: 'text',
            marker: {size: size, color: 'rgba(0,0,0,0)', line: {color: color, width: 2.5}},
            showlegend: true, meta: 'ring'};
  }

  function matches() {
    const query = search.value.trim().toLowerCase();
    if (!query) return null;
    const hit = i => [data.names[i], data.references[i]].some(n => n.toLowerCase().includes(query));
    return [...Array(K).keys()].filter(hit);
  }

  function traces() {
    const out = [];
    if (data.paths.length) out.push(pathTrace());
    const points = pointTraces(select.value);
    const found = matches();
    if (found !== null) {
      const hit = new Set(found);
      for (const trace of points) {
        trace.marker.opacity = trace.customdata.map(i => hit.has(i) ? 1.0 : 0.18);
      }
    }
    out.push(...points);
    // Neighbours first and unlabelled (the side panel names them), so that the picked model
    // and the search matches, drawn larger, stay visible on top of their rings.
    if (picked !== null) {
      const near = data.neighbors[picked].map(([j]) => j);
      if (near.length) out.push(ringTrace(near, 'nearest to ' + data.names[picked], '#ff7f0e', false, 14));
      out.push(ringTrace([picked], data.names[picked], '#000000', true, 18));
    }
    if (found !== null && found.length) {
      out.push(ringTrace(found, 'search: ' + search.value.trim(), '#d62728', found.length <= 20, 22));
    }
    document.getElementById('matches').textContent =
      found === null ? '' : `${found.length} of ${K} models match`;
    return out;
  }

  const layout = {
    // The top margin keeps plotly's tool bar off the legend.
    hovermode: 'closest', dragmode: 'pan', margin: {l: 60, r: 20, t: 40, b: 50},
    xaxis: {title: {text: esc(data.axis_label + ' 1')}, zeroline: false},
    yaxis: {title: {text: esc(data.axis_label + ' 2')}, zeroline: false, scaleanchor: 'x', scaleratio: 1},
    legend: {itemsizing: 'constant'}, uirevision: 'keep',
  };
  const config = {scrollZoom: true, displaylogo: false, responsive: true};

  function draw() { return Plotly.react(mapDiv, traces(), layout, config); }

  function listNeighbors(index) {
    picked = index;
    const title = document.getElementById('picked');
    const list = document.getElementById('neighbors');
    list.replaceChildren();
    if (!data.neighbors[index].length) {
      title.textContent = `${data.names[index]}: no KL matrix in this page`;
    } else {
      title.textContent = `Nearest to ${data.names[index]} (estimated KL, ${data.kl_unit})`;
      for (const [j, kl] of data.neighbors[index]) {
        const item = document.createElement('li');
        item.textContent = `${data.names[j]} (${Number(kl).toPrecision(4)})`;
        item.dataset.index = j;
        item.addEventListener('click', () => listNeighbors(j));
        list.appendChild(item);
      }
    }
    draw();
  }

  draw().then(() => {
    mapDiv.on('plotly_click', event => {
      const point = event.points.find(p => p.customdata !== undefined);
      if (point) listNeighbors(point.customdata);
    });
    select.addEventListener('change', draw);
    search.addEventListener('input', draw);
    showPaths.addEventListener('change', draw);
    document.body.dataset.ready = 'yes';
  });
})();
"""
