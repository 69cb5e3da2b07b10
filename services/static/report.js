// The run report's one script: the dashboard's chart code (charts.js, included below) drawing the
// charts whose numbers the report carries in its JSON data block #report-charts
// ({container id: [lineChart options]}). It reads nothing else and requests nothing.
"use strict";
(function () {
  // @include charts.js
  const data = JSON.parse(document.getElementById("report-charts").textContent || "{}");
  for (const [target, charts] of Object.entries(data)) {
    const box = document.getElementById(target);
    if (!box) continue;
    for (const opts of charts) box.append(lineChart(opts));
  }
  document.documentElement.setAttribute("data-charts", "drawn");
})();
