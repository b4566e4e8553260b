// Shared launch helper for the page scripts (placeholder until the lead's version lands).
import { chromium } from 'playwright-core';

export function launch() {
  return chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
}
