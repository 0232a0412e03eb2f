"""Local Backpack, Lighter and Telegram servers that speak the real wire protocols."""
