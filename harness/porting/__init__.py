"""porting"""
