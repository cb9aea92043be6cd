// Umbra's plugin for NASA Open MCT (ground/web/openmct.py serves the API it reads).
//
// Objects: a root folder "Umbra fleet", a folder per node, a telemetry point per channel
// of the one dictionary (per GPU for temp_c, power_w, cap_w, progress), with units,
// formats, enumerations and ranges; ground's limits become a limit evaluator (values
// coloured yellow and red) and limit lines on plots.  Historical data from the archive
// (min/max-bucketed for long windows), realtime data over one websocket.
"use strict";

(function () {
  const NS = "umbra";
  const ROOT = "fleet";
  let dictionaryPromise = null;

  function dictionary() {
    if (!dictionaryPromise) {
      dictionaryPromise = fetch("/api/openmct/dictionary", { credentials: "same-origin" }).then(r => {
        if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
        return r.json();
      });
    }
    return dictionaryPromise;
  }

  function channelOf(dict, key) {
    return dict.channels.find(c => c.name === key.split("[")[0]);
  }

  function keysOf(channel, gpus) {
    if (!channel.per_gpu) return [channel.name];
    return Array.from({ length: gpus }, (_, i) => `${channel.name}[${i}]`);
  }

  function valueMetadata(channel, key) {
    const meta = {
      key: "value", name: key, unit: channel.unit || undefined, hints: { range: 1 },
      format: channel.kind === "enum" ? "enum" : channel.kind === "int" ? "number" : "float",
    };
    if (channel.kind === "enum") meta.enumerations = channel.choices.map((s, i) => ({ value: i, string: s }));
    if (channel.lo != null) meta.min = channel.lo;
    if (channel.hi != null) meta.max = channel.hi;
    return meta;
  }

  // -- realtime: one websocket for every subscription ------------------------------------
  const listeners = new Map(); // id -> Set(callback)
  let socket = null;
  let socketReady = null;

  function openSocket() {
    if (socketReady) return socketReady;
    socketReady = new Promise(resolve => {
      socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/openmct/realtime`);
      socket.onopen = () => {
        for (const id of listeners.keys()) socket.send(JSON.stringify({ subscribe: id }));
        resolve(socket);
      };
      socket.onmessage = event => {
        const datum = JSON.parse(event.data);
        if (datum.error) { console.warn("umbra realtime:", datum.error); return; }
        for (const cb of listeners.get(datum.id) || []) cb(datum);
      };
      socket.onclose = () => { socket = null; socketReady = null; if (listeners.size) setTimeout(openSocket, 2000); };
    });
    return socketReady;
  }

  function subscribe(id, callback) {
    if (!listeners.has(id)) {
      listeners.set(id, new Set());
      openSocket().then(s => s.send(JSON.stringify({ subscribe: id })));
    }
    listeners.get(id).add(callback);
    return () => {
      const set = listeners.get(id);
      if (!set) return;
      set.delete(callback);
      if (!set.size) {
        listeners.delete(id);
        if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ unsubscribe: id }));
      }
    };
  }

  // -- limits: ground's yellow and red bands (ground/limits.py) --------------------------
  function limitsOf(channel) {
    if (channel.yellow == null || channel.red == null) return null;
    const side = channel.high ? "high" : "low";
    return {
      WARNING: { [side]: { color: "yellow", value: channel.yellow } },
      CRITICAL: { [side]: { color: "red", value: channel.red } },
    };
  }

  function evaluate(channel, value) {
    if (value == null || channel.yellow == null || channel.red == null) return undefined;
    const upr = channel.high;
    const red = upr ? value >= channel.red : value <= channel.red;
    const yellow = upr ? value >= channel.yellow : value <= channel.yellow;
    const edge = upr ? "upr" : "lwr";
    if (red) return { cssClass: `is-limit--${edge} is-limit--red`, name: upr ? "Red High" : "Red Low" };
    if (yellow) return { cssClass: `is-limit--${edge} is-limit--yellow`, name: upr ? "Yellow High" : "Yellow Low" };
    return undefined;
  }

  function UmbraPlugin() {
    return function install(openmct) {
      openmct.types.addType("umbra.telemetry", {
        name: "Umbra channel", description: "A housekeeping channel of an Umbra node", cssClass: "icon-telemetry",
      });
      openmct.objects.addRoot({ namespace: NS, key: ROOT });

      openmct.objects.addProvider(NS, {
        get: async identifier => {
          const dict = await dictionary();
          const key = identifier.key;
          if (key === ROOT) {
            return { identifier, name: "Umbra fleet", type: "folder", location: "ROOT" };
          }
          if (key.startsWith("node:")) {
            const id = key.slice(5);
            return { identifier, name: `Node ${id}`, type: "folder", location: `${NS}:${ROOT}` };
          }
          const dot = key.indexOf(".");
          const node = key.slice(0, dot);
          const chan = key.slice(dot + 1);
          const channel = channelOf(dict, chan);
          return {
            identifier, name: `${chan}${channel.unit ? ` (${channel.unit})` : ""}`, type: "umbra.telemetry",
            location: `${NS}:node:${node}`,
            notes: channel.description,
            telemetry: {
              values: [
                { key: "utc", source: "utc", name: "Timestamp", format: "utc", hints: { domain: 1 } },
                valueMetadata(channel, chan),
              ],
            },
          };
        },
      });

      openmct.composition.addProvider({
        appliesTo: o => o.identifier.namespace === NS && o.type === "folder",
        load: async o => {
          const dict = await dictionary();
          if (o.identifier.key === ROOT) {
            return dict.nodes.map(n => ({ namespace: NS, key: `node:${n.id}` }));
          }
          const id = o.identifier.key.slice(5);
          const node = dict.nodes.find(n => n.id === id) || { gpus: 0 };
          return dict.channels.flatMap(c => keysOf(c, node.gpus)).map(k => ({ namespace: NS, key: `${id}.${k}` }));
        },
      });

      openmct.telemetry.addProvider({
        supportsRequest: o => o.type === "umbra.telemetry",
        request: async (o, options) => {
          const q = new URLSearchParams({
            id: o.identifier.key, start: Math.floor(options.start), end: Math.ceil(options.end),
            size: String(options.size || 1000),
          });
          const r = await fetch(`/api/openmct/history?${q}`, { credentials: "same-origin" });
          if (!r.ok) throw new Error(`history ${r.status}`);
          return r.json();
        },
        supportsSubscribe: o => o.type === "umbra.telemetry",
        subscribe: (o, callback) => subscribe(o.identifier.key, callback),
        supportsLimits: o => o.type === "umbra.telemetry",
        getLimitEvaluator: o => {
          const chan = o.identifier.key.slice(o.identifier.key.indexOf(".") + 1);
          let channel = null;
          dictionary().then(d => { channel = channelOf(d, chan); });
          return {
            evaluate: (datum, meta) => (channel && (!meta || meta.key === "value")) ? evaluate(channel, datum.value)
              : undefined,
          };
        },
        getLimits: o => ({
          limits: async () => {
            const d = await dictionary();
            const chan = o.identifier.key.slice(o.identifier.key.indexOf(".") + 1);
            return limitsOf(channelOf(d, chan)) || {};
          },
        }),
      });
    };
  }

  const HOUR = 60 * 60 * 1000;
  const MINUTE = 60 * 1000;
  openmct.setAssetPath("/openmct/dist");
  openmct.install(openmct.plugins.LocalStorage());
  openmct.install(openmct.plugins.Espresso());
  openmct.install(openmct.plugins.MyItems());
  openmct.install(openmct.plugins.UTCTimeSystem());
  openmct.install(openmct.plugins.LADTable());
  openmct.install(openmct.plugins.Conductor({
    menuOptions: [
      { name: "Realtime", timeSystem: "utc", clock: "local", clockOffsets: { start: -15 * MINUTE, end: 15 * 1000 },
        presets: [{ label: "1 Hour", bounds: { start: -HOUR, end: 15 * 1000 } }] },
      { name: "Fixed", timeSystem: "utc", bounds: { start: Date.now() - HOUR, end: Date.now() },
        presets: [{ label: "Last day", bounds: { start: () => Date.now() - 24 * HOUR, end: () => Date.now() } },
          { label: "Last week", bounds: { start: () => Date.now() - 7 * 24 * HOUR, end: () => Date.now() } }] },
    ],
  }));
  openmct.install(UmbraPlugin());
  document.addEventListener("DOMContentLoaded", () => openmct.start());
})();
