// Terminal colours in a log, as the page's own classes: SGR colours and bold become spans
// with classes (the CSP allows no style attributes), every other escape sequence is
// dropped, and the text is only ever set as text.

export const PLAIN = Object.freeze({ fg: null, bg: null, bold: false });

// CSI (ESC [ … final), OSC (ESC ] … BEL or ESC \), or a two-byte escape; a sequence cut
// off at the end of a line is dropped as well.
const ESCAPE = /\x1b(?:\[([0-?]*)[ -/]*([@-~]|$)|\][^\x07\x1b]*(?:\x07|\x1b\\|$)|[@-_]|$)/g;
// Control characters a terminal would not print (a tab stays).
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

function applySgr(state, parameters) {
  const codes = parameters === "" ? [0] : parameters.split(/[;:]/).map((code) => Number(code || 0));
  let { fg, bg, bold } = state;
  for (let index = 0; index < codes.length; index += 1) {
    const code = codes[index];
    if (code === 0) ({ fg, bg, bold } = PLAIN);
    else if (code === 1) bold = true;
    else if (code === 22) bold = false;
    else if (code >= 30 && code <= 37) fg = code - 30;
    else if (code === 39) fg = null;
    else if (code >= 40 && code <= 47) bg = code - 40;
    else if (code === 49) bg = null;
    else if (code >= 90 && code <= 97) fg = code - 90 + 8;
    else if (code >= 100 && code <= 107) bg = code - 100 + 8;
    else if (code === 38 || code === 48) {
      // 256-colour and true colour are not drawn; their arguments are not codes.
      index += codes[index + 1] === 5 ? 2 : codes[index + 1] === 2 ? 4 : 1;
    }
  }
  if (fg === null && bg === null && !bold) return PLAIN;
  return fg === state.fg && bg === state.bg && bold === state.bold ? state : { fg, bg, bold };
}

// The runs of text of one line and the colours each is drawn in, starting from `state`;
// and the state the line ends in (colours carry over to the next line, as in a terminal).
export function parse(text, state = PLAIN) {
  const runs = [];
  let last = 0;
  const push = (piece) => {
    const clean = piece.replace(CONTROL, "");
    if (clean) runs.push({ text: clean, ...state });
  };
  ESCAPE.lastIndex = 0;
  for (let match = ESCAPE.exec(text); match; match = ESCAPE.exec(text)) {
    push(text.slice(last, match.index));
    if (match[2] === "m") state = applySgr(state, match[1]);
    last = ESCAPE.lastIndex;
  }
  push(text.slice(last));
  return { runs, state };
}

// What a terminal would show of a line rewritten with carriage returns (a progress
// bar): the last segment. A line ending in CR LF keeps its text.
export function visible(line) {
  const trimmed = line.replace(/\r+$/, "");
  const cut = trimmed.lastIndexOf("\r");
  return cut < 0 ? { before: "", shown: trimmed } : { before: trimmed.slice(0, cut), shown: trimmed.slice(cut + 1) };
}

export function classesOf(run) {
  const names = [];
  if (run.fg !== null) names.push(`ansi-fg${run.fg}`);
  if (run.bg !== null) names.push(`ansi-bg${run.bg}`);
  if (run.bold) names.push("ansi-bold");
  return names.join(" ");
}

// Fill `element` with one line of a log; returns the colour state at its end.
export function renderLine(element, line, state = PLAIN) {
  const { before, shown } = visible(line);
  if (!before && !shown.includes("\x1b") && state === PLAIN) {
    // Most lines: no colour at all, one text node.
    element.textContent = shown.replace(CONTROL, "");
    return state;
  }
  // Colours set in the overwritten segments still hold for what follows.
  const start = before ? parse(before, state).state : state;
  const { runs, state: end } = parse(shown, start);
  element.replaceChildren(
    ...runs.map((run) => {
      const names = classesOf(run);
      if (!names) return document.createTextNode(run.text);
      const span = document.createElement("span");
      span.className = names;
      span.textContent = run.text;
      return span;
    }),
  );
  return end;
}
