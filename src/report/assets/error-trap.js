// Runs first: records every script error of the page for the self-check.
window.__tracebenchErrors=[];
window.addEventListener('error',function(e){window.__tracebenchErrors.push(String(e.message||e));});
