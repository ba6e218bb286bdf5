"use strict";
// The image grid of a run, drawn over its image: one div per cell at the grid's own pixel edges
// (Grid.row_edges / col_edges, which round the same way the masks do), player cells marked with
// their grid id (row * cols + col, the id every list uses) and clickable, the other cells inert. Shared by report.html (inlined: the
// report is one offline file) and the live explorer (served as /static/grid.js).
//   pane: a positioned element of `px` x `px` pixels holding the image
//   run: {grid: [rows, cols], edges: [rowEdges, colEdges], size: [H, W], players: [cell ids]}
//   onToggle(bit, cell): called when a player cell is clicked (none: nothing is clickable)
//   isOn(cell): whether a cell is drawn selected
//   onOther(cell): called when a cell that is not a player is clicked (to say why nothing happens)
function drawGrid(pane, run, px, onToggle, isOn, onOther) {
  pane.querySelectorAll(".cell").forEach((el) => el.remove());
  const [rowE, colE] = run.edges, [H, W] = run.size, sx = px / W, sy = px / H;
  for (let r = 0; r < run.grid[0]; r++) for (let c = 0; c < run.grid[1]; c++) {
    const id = r * run.grid[1] + c, el = document.createElement("div");
    el.className = "cell"; el.dataset.cell = id;
    el.style.top = rowE[r] * sy + "px"; el.style.left = colE[c] * sx + "px";
    el.style.height = (rowE[r + 1] - rowE[r]) * sy + "px";
    el.style.width = (colE[c + 1] - colE[c]) * sx + "px";
    const bit = run.players.indexOf(id);
    if (bit >= 0) {
      el.classList.add("player"); el.title = "cell " + id + " (bit " + bit + ")";
      const label = document.createElement("span");
      label.className = "id"; label.textContent = id; el.appendChild(label);
      if (onToggle) el.addEventListener("click", () => onToggle(bit, id));
    } else {
      el.title = "cell " + id + " (not a player)";
      if (onOther) el.addEventListener("click", () => onOther(id));
    }
    if (isOn && isOn(id)) el.classList.add("on");
    pane.appendChild(el);
  }
}
