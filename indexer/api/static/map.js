/*
 * The map page of pcrs-indexer: draws the layers of the page's data (the JSON of #pcrs-data, made
 * by indexer/preview.py) with Leaflet, their legend with counts, and the properties of what is
 * clicked. Nothing here knows a layer by name: each layer gives its classes (id, label, colour,
 * count) and the property of its features naming their class. Every text from the data is set as
 * text, never as HTML (file names come from storages nobody checked).
 */
(function () {
  "use strict";

  var SVG_LIMIT = 5000;   // more features than this are drawn on a canvas (one element, not one per feature)
  var LIST_LIMIT = 500;   // files without footprint listed at most

  var data = JSON.parse(document.getElementById("pcrs-data").textContent);
  var token = new URLSearchParams(window.location.search).get("token");

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function number(value) {
    return typeof value === "number" ? value.toLocaleString("fr-FR") : String(value);
  }

  document.getElementById("pcrs-title").textContent = data.title;
  document.getElementById("pcrs-subtitle").textContent = data.subtitle || "";

  var facts = document.getElementById("pcrs-facts");
  (data.facts || []).forEach(function (fact) {
    facts.appendChild(el("dt", null, fact[0]));
    facts.appendChild(el("dd", null, number(fact[1])));
  });

  var drawable = 0;
  data.layers.forEach(function (layer) {
    layer.features.forEach(function (f) { if (f.geometry) { drawable += 1; } });
  });
  var map = L.map("pcrs-map", {
    preferCanvas: drawable > SVG_LIMIT, zoomSnap: 0.25, minZoom: 2, maxZoom: 22, attributionControl: false
  });
  L.control.scale({ imperial: false, maxWidth: 160 }).addTo(map);

  var selected = null;

  function swatch(cls) {
    var node = el("span", "pcrs-swatch");
    node.style.color = cls.color;
    node.style.background = cls.color + (cls.outline ? "14" : "99");
    return node;
  }

  // A feature's properties: its own, then those its class shares (sent once, as `common`).
  function propsOf(cls, feature) {
    return Object.assign({}, feature.properties || {}, cls.common || {});
  }

  function styleOf(layer, cls) {
    return {
      color: cls.color, weight: cls.outline ? 2.5 : 1, opacity: 1, fillColor: cls.color,
      fillOpacity: cls.fill === undefined ? 0.55 : cls.fill, dashArray: cls.dash || null,
      className: "pcrs-" + layer.id + "-" + cls.id
    };
  }

  function showProperties(layer, cls, feature, shape) {
    if (selected) { selected.shape.setStyle(selected.style); }
    selected = null;
    if (shape) {
      selected = { shape: shape, style: styleOf(layer, cls) };
      shape.setStyle({ weight: 3, color: "#161616" });
      if (!cls.outline) { shape.bringToFront(); }
    }
    var panel = document.getElementById("pcrs-properties");
    panel.replaceChildren();
    var props = propsOf(cls, feature);
    var badge = el("div", "pcrs-badge");
    badge.appendChild(swatch(cls));
    badge.appendChild(el("span", null, layer.label + " · " + cls.label));
    panel.appendChild(badge);
    var title = props[layer.name] || props[layer.link] || cls.label;
    panel.appendChild(el("h3", null, title));
    var path = layer.link ? props[layer.link] : null;
    if (token && data.download && path) {
      var href = data.download + String(path).split("/").map(encodeURIComponent).join("/") +
        "?token=" + encodeURIComponent(token);
      var link = el("a", "pcrs-download", "Télécharger la dalle");
      link.href = href;
      link.setAttribute("download", "");
      link.rel = "noopener";
      panel.appendChild(link);
    }
    var table = el("table");
    Object.keys(props).forEach(function (key) {
      var value = props[key];
      if (key === layer.key || value === null || value === undefined || value === "") { return; }
      if (key === layer.name && value === title) { return; }
      var row = el("tr");
      row.appendChild(el("th", null, key));
      row.appendChild(el("td", null, typeof value === "object" ? JSON.stringify(value) : number(value)));
      table.appendChild(row);
    });
    panel.appendChild(table);
    document.querySelectorAll("#pcrs-unplaced li.pcrs-selected").forEach(function (li) {
      li.classList.remove("pcrs-selected");
    });
  }

  var hover = document.getElementById("pcrs-hover");
  var extent = L.latLngBounds([]);
  var unplaced = [];
  var legend = document.getElementById("pcrs-legend");

  data.layers.forEach(function (layer) {
    var classes = {};
    layer.classes.forEach(function (cls) { classes[cls.id] = cls; });
    var groups = {};
    layer.features.forEach(function (feature) {
      var id = (feature.properties || {})[layer.key];
      if (!classes[id]) { return; }
      if (!feature.geometry) { unplaced.push([layer, classes[id], feature]); return; }
      (groups[id] = groups[id] || []).push(feature);
    });
    var block = el("div", "pcrs-layer");
    block.dataset.layer = layer.id;
    block.appendChild(el("h3", null, layer.label));
    var listed = [];
    layer.classes.forEach(function (cls) {
      if (!cls.count) { return; }
      var shapes = null;
      if (groups[cls.id]) {
        shapes = L.geoJSON(groups[cls.id], {
          style: function () { return styleOf(layer, cls); },
          onEachFeature: function (feature, shape) {
            shape.on("click", function (event) {
              L.DomEvent.stopPropagation(event);
              showProperties(layer, cls, feature, shape);
            });
            shape.on("mouseover", function () {
              hover.textContent = (propsOf(cls, feature)[layer.name] || cls.label) + " — " + cls.label;
              hover.style.display = "block";
            });
            shape.on("mouseout", function () { hover.style.display = "none"; });
          }
        }).addTo(map);
        extent.extend(shapes.getBounds());
      }
      var row = el("label", "pcrs-class");
      row.dataset.layer = layer.id;
      row.dataset.class = cls.id;
      row.dataset.count = String(cls.count);
      if (shapes) {
        var box = el("input");
        box.type = "checkbox";
        box.checked = true;
        box.title = "Afficher ou masquer";
        box.addEventListener("change", function () {
          if (box.checked) { shapes.addTo(map); } else { map.removeLayer(shapes); }
          row.classList.toggle("pcrs-off", !box.checked);
        });
        row.appendChild(box);
      } else {
        row.appendChild(el("span", "pcrs-nobox"));
        listed.push(row);
      }
      row.appendChild(swatch(cls));
      row.appendChild(el("span", "pcrs-label", cls.label));
      row.appendChild(el("span", "pcrs-count", number(cls.count)));
      if (shapes) { block.appendChild(row); }
    });
    if (listed.length) {
      block.appendChild(el("p", "pcrs-aside", "Sans emprise (fichiers listés plus bas)"));
      listed.forEach(function (row) { block.appendChild(row); });
    }
    if (layer.classes.some(function (cls) { return cls.count; })) { legend.appendChild(block); }
  });

  if (unplaced.length) {
    var list = document.getElementById("pcrs-unplaced");
    document.getElementById("pcrs-unplaced-card").hidden = false;
    unplaced.slice(0, LIST_LIMIT).forEach(function (item) {
      var layer = item[0], cls = item[1], feature = item[2];
      var li = el("li");
      li.dataset.class = cls.id;
      li.appendChild(swatch(cls));
      var props = propsOf(cls, feature);
      li.appendChild(el("span", null, props[layer.name] || props[layer.link]));
      li.title = cls.label;
      li.addEventListener("click", function () {
        showProperties(layer, cls, feature, null);
        li.classList.add("pcrs-selected");
      });
      list.appendChild(li);
    });
    if (unplaced.length > LIST_LIMIT) {
      var more = unplaced.length - LIST_LIMIT;
      list.appendChild(el("li", "pcrs-more", "… et " + number(more) + (more > 1 ? " autres" : " autre")));
    }
  }

  function fit() {
    if (extent.isValid()) { map.fitBounds(extent, { padding: [24, 24] }); } else { map.setView([46.6, 2.4], 6); }
  }
  var Reset = L.Control.extend({
    options: { position: "topleft" },
    onAdd: function () {
      var box = el("div", "leaflet-bar pcrs-reset");
      var a = el("a", null, "⤢");
      a.href = "#";
      a.title = "Revenir à l’emprise";
      a.setAttribute("role", "button");
      L.DomEvent.on(a, "click", function (event) { L.DomEvent.preventDefault(event); fit(); });
      L.DomEvent.disableClickPropagation(box);
      box.appendChild(a);
      return box;
    }
  });
  map.addControl(new Reset());
  fit();
  document.body.dataset.ready = "true";
}());
