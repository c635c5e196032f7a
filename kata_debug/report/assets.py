"""The page's own CSS and JavaScript, inlined into every report.

Kept apart from the markup so their hashes (the Content-Security-Policy allows exactly these
two blocks and nothing else) are computed over the exact text that is embedded.
"""

from __future__ import annotations

CSS = """
:root{--err:#b3261e;--errbg:#fdecea;--warn:#8a5a00;--warnbg:#fff6e0;--mute:#667;--line:#e3e5ea}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1b1d22;background:#fafbfc}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 16px}
header h1{font-size:17px;margin:0 0 2px}
header .sum{color:var(--mute);font-size:12px;margin:0 0 6px}
#toolbar{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;font-size:12px}
#toolbar fieldset{border:0;margin:0;padding:0;display:flex;gap:6px;align-items:center}
#toolbar legend{float:left;font-weight:600;margin-right:4px}
#toolbar input[type=search]{width:280px;padding:3px 6px;font:inherit}
#shown{color:var(--mute)}
main{padding:8px 16px 40px}
h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid var(--line);padding-bottom:3px}
h3{font-size:15px;margin:4px 0}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0 8px}
th,td{border:1px solid var(--line);padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f2f3f6;font-weight:600}
code,pre,.tl{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.finding{border:1px solid var(--line);border-left:5px solid var(--mute);background:#fff;padding:6px 10px;margin:6px 0}
.finding[data-severity=error]{border-left-color:var(--err)}
.finding[data-severity=warning]{border-left-color:#d08a00}
.finding .fix{background:#eef6ee;padding:3px 6px}
.finding ul{margin:2px 0;padding-left:18px}
.sev{display:inline-block;font-size:11px;font-weight:700;text-transform:uppercase;padding:0 5px;border-radius:3px;background:#e7e8ec}
.sev.error{background:var(--err);color:#fff}.sev.warning{background:#d08a00;color:#fff}
.ok{color:#1a7f37}.bad{color:var(--err);font-weight:600}.partial,.timeout{color:var(--warn);font-weight:600}
.node{margin-top:10px}
.sandbox{scroll-margin-top:120px;background:#fff;border:1px solid var(--line);padding:6px 10px;margin:10px 0;content-visibility:auto;contain-intrinsic-size:auto 600px}
.sandbox.hit-none{display:none}
.meta{color:var(--mute);font-size:12px}
.omit{font-size:12px;color:var(--warn)}
.tl{list-style:none;margin:4px 0;padding:0;border-top:1px solid var(--line)}
.e{display:grid;grid-template-columns:150px 92px 104px 1fr;gap:0 6px;border-bottom:1px solid #f0f1f4;padding:1px 2px}
.e[hidden]{display:none}
.e time{color:#334;white-space:nowrap}.e .o{color:var(--mute);text-align:right;white-space:nowrap;overflow:hidden}.e .s{color:#4a4f9a;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.e code{white-space:pre-wrap;word-break:break-all}
.e .p{grid-column:4;color:#99a;font-size:11px}
.e[data-level=error]{background:var(--errbg)}.e[data-level=error] code{color:var(--err)}
.e[data-level=warning]{background:var(--warnbg)}
.e[data-kind=console] code{color:#0b5f3b}
.e[data-kind=event] .s{color:#8a4b00}
.e[data-kind=span] code{color:#35309a}
.bar{grid-column:4;height:7px;background:#7b74d6;border-radius:2px;min-width:2px;margin:1px 0}
.e[data-level=error] .bar{background:var(--err)}
.none{color:var(--mute);font-style:italic}
.capture{border:1px solid #d9c6f0;border-left:5px solid #7b4fc4;background:#fbf8ff;padding:6px 10px;margin:12px 0}
.capture>h3{color:#4b2a86}
.capture .trigger{margin:2px 0}
.capture .tline{white-space:pre-wrap;word-break:break-all;color:var(--err)}
.omitted-sandboxes ul{max-height:320px;overflow:auto;font-size:12px;margin:4px 0;padding-left:18px}
"""

JS = """
(function(){
  "use strict";
  var entries=Array.prototype.slice.call(document.querySelectorAll("li.e"));
  var text=entries.map(function(e){return e.textContent.toLowerCase();});
  entries.forEach(function(e){
    var b=e.querySelector(".bar");
    if(b){b.style.marginLeft=(b.dataset.l||"0")+"%";b.style.width=(b.dataset.w||"0")+"%";}
    var d=+(e.dataset.depth||0);
    if(d){e.querySelector("code").style.paddingLeft=(d*14)+"px";}
  });
  var sections=Array.prototype.slice.call(document.querySelectorAll("section.sandbox"));
  var search=document.getElementById("q");
  var shown=document.getElementById("shown");
  function checked(group){
    var on={};
    document.querySelectorAll("input[data-filter="+group+"]").forEach(function(i){if(i.checked){on[i.value]=1;}});
    return on;
  }
  function apply(){
    var kinds=checked("kind"),levels=checked("level"),sources=checked("source");
    var q=search.value.trim().toLowerCase();
    var visible=0;
    for(var i=0;i<entries.length;i++){
      var e=entries[i],d=e.dataset;
      var on=!!kinds[d.kind]&&!!levels[d.level]&&!!sources[d.src]&&(!q||text[i].indexOf(q)>=0);
      e.hidden=!on;
      if(on){visible++;}
    }
    sections.forEach(function(s){
      var n=s.querySelectorAll("li.e:not([hidden])").length;
      var c=s.querySelector(".count");
      if(c){c.textContent=n+" of "+c.dataset.total+" entries shown";}
      s.classList.toggle("hit-none",!!q&&n===0&&s.textContent.toLowerCase().indexOf(q)<0);
    });
    shown.textContent=visible+" of "+entries.length+" timeline entries shown";
    document.body.dataset.visible=String(visible);
  }
  var timer=null;
  search.addEventListener("input",function(){clearTimeout(timer);timer=setTimeout(apply,120);});
  document.querySelectorAll("#toolbar input[type=checkbox]").forEach(function(i){i.addEventListener("change",apply);});
  apply();
})();
"""
