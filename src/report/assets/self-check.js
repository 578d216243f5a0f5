// Counts the drawn marks of every chart against data-expect, notes script errors, and
// writes the verdict into #tracebench-check (read by scripts/check-report.sh).
(function(){var el=document.getElementById('tracebench-check');
try{var parts=[],bad=[];var charts=document.querySelectorAll('svg[data-chart]');
for(var i=0;i<charts.length;i++){var svg=charts[i];var name=svg.getAttribute('data-chart');
var expect=parseInt(svg.getAttribute('data-expect'),10);var drawn=svg.querySelectorAll('[data-mark]').length;
var box=svg.getBoundingClientRect();parts.push(name+'='+drawn);
if(drawn===0||drawn!==expect||box.width<10||box.height<10){bad.push(name);}}
var errors=window.__tracebenchErrors||[];
var ok=errors.length===0&&bad.length===0&&parts.length>0;
el.setAttribute('data-verdict',ok?'ok':'fail');el.setAttribute('data-height',String(Math.ceil(document.documentElement.scrollHeight)));
el.textContent='report self-check: '+(ok?'ok':'fail')+'; charts '+parts.join(' ')+
(bad.length?'; empty or broken: '+bad.join(','):'')+(errors.length?'; script errors: '+errors.join(' | '):'');
}catch(e){el.setAttribute('data-verdict','fail');el.textContent='report self-check: fail; '+e;}})();
